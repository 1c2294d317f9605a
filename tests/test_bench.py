"""`make bench` keeps working: a quick run of its storage part writes its results (no speed is asserted here;
speed goals are measured by the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def _quick(tmp_path, part: str, timeout: int) -> dict:
    """`python -m bench.run --quick --only PART` into tmp_path; the benchmarks.json it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", part, "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "benchmarks.json").read_text())


def test_the_quick_storage_benchmark_runs_and_writes_its_results(tmp_path):
    results = _quick(tmp_path, "storage", 300)
    storage = results["parts"]["storage"]
    assert storage["rows_per_s"] > 0
    assert (tmp_path / "benchmarks.md").read_text().count("storage") >= 1


def test_the_quick_startup_benchmark_times_each_command_and_names_its_costliest_imports(tmp_path):
    startup = _quick(tmp_path, "startup", 600)["parts"]["startup"]
    assert "error" not in startup, startup.get("error")
    assert set(startup["commands"]) == {"harness --help", "harness runs", "harness validate suites/invoices",
                                        "harness run (1 case)"}
    for name, result in startup["commands"].items():
        assert result["wall_s"]["median"] > 0, name
        costliest = result["imports"]["costliest"]
        assert 1 <= len(costliest) <= 5 and costliest == sorted(costliest, key=lambda c: -c["ms"]), name
    # the run imports what a run needs (the store), the help text does not
    run_packages = {c["package"] for c in startup["commands"]["harness run (1 case)"]["imports"]["costliest"]}
    assert run_packages & {"pandas", "duckdb", "aiohttp", "numpy"}
    assert startup["targets"][0]["measurement"] == "start-up: harness --help, wall time"
    assert "## 0. Start-up" in (tmp_path / "benchmarks.md").read_text()


def test_the_quick_report_benchmark_measures_the_large_render_in_a_child(tmp_path):
    """The report part renders a large run in a process of its own and reports its peak memory as a target."""
    report = _quick(tmp_path, "report", 600)["parts"]["report"]
    large = report["large"]
    assert large["cases"] > report["cases"] and large["render_s"] > 0
    assert 50 < large["rss_before_render_mib"] <= large["peak_rss_mib"] < 24 * 1024  # a real process's, in MiB
    names = [row["measurement"] for row in report["targets"]]
    assert f"report: peak RSS rendering {large['cases']:,} cases × 3 providers" in names
    assert "At scale" in (tmp_path / "benchmarks.md").read_text()
    row = next(row for row in report["targets"] if row["measurement"].startswith("report: peak RSS"))
    assert row["unit"] == "MiB" and row["target"] == "<= 1,536 MiB" and "a quick run" in row["note"]


def test_the_quick_proxy_benchmark_measures_the_proxy_beside_direct_calls(tmp_path):
    """The proxy part drives the upstream directly and through `harness proxy` (and a minimal forwarder), every
    answer byte for byte the upstream's; the slow candidate's copies are dropped, not waited for; the proxies stop
    cleanly (no latency is asserted here)."""
    proxy = _quick(tmp_path, "proxy", 300)["parts"]["proxy"]
    assert "error" not in proxy, proxy.get("error")
    contenders = proxy["contenders"]
    assert list(contenders) == ["direct", "forwarder", "pass-through", "mirror-fast", "mirror-slow"]
    for name, x in contenders.items():
        assert x["requests"] > 0 and x["errors"] == 0 and x["same_bytes"] == x["requests"], (name, x["first_error"])
        assert x["ttft_ms"]["p99"] > 0 and x["send_lag_ms"]["p99"] is not None
    fast, slow = contenders["mirror-fast"], contenders["mirror-slow"]
    assert fast["counts"]["mirrored"] == fast["requests"] and fast["counts"]["dropped"] == 0
    assert slow["counts"]["dropped"] > 0 and contenders["pass-through"]["counts"]["mirrored"] == 0
    assert all(contenders[n]["exit"]["exit_code"] == 0 for n in ("pass-through", "mirror-fast", "mirror-slow"))
    assert fast["proxy_cpu_s"] > 0
    assert [row["value"] is not None for row in proxy["targets"]] == [True] * 4
    assert "## 9. Proxy" in (tmp_path / "benchmarks.md").read_text()


def test_a_childs_peak_rss_is_its_own_and_not_its_parents():
    """ru_maxrss of a child started by subprocess carries its parent's peak on Linux; peak_rss_kib must not."""
    code = ("import subprocess, sys\n"
            "block = bytearray(400 * 2**20)\n"
            "block[::4096] = b'x' * len(block[::4096])\n"
            "del block\n"
            "sys.exit(subprocess.run([sys.executable, '-c', 'from bench.common import peak_rss_kib; "
            "print(peak_rss_kib())']).returncode)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) < 200 * 1024  # KiB: the child's own few tens of MB, not the parent's 400


def test_bench_is_a_package_whose_modules_never_import_the_orchestrator():
    """bench/ modules import each other as `bench.x`, never `run` (the orchestrator on top), and none puts a
    folder on sys.path."""
    import ast

    for path in (ROOT / "bench").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in {"run", "clients", "servers", "workload", "report_scale",
                                                         "report_doc", "common", "peers"}, (path, node.module)
                if path.name != "run.py":
                    assert node.module != "bench.run", path
                    assert node.module != "bench" or "run" not in {a.name for a in node.names}, path
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in {"run", "clients", "servers", "workload", "report_scale",
                                                        "report_doc"} for a in node.names), path
        assert "sys.path.insert" not in path.read_text(), path
