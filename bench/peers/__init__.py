"""Part 8 of `make bench` (`make bench PEERS=1`): the same cases through Inspect AI, promptfoo and the harness.

Each tool is installed outside the harness's own environment, into runs/bench/peers-env/ (git-ignored; reused by the
next run to save the minutes an install takes; delete it to start afresh): Inspect AI into a virtual environment of
its own (`pip install inspect-ai openai`), promptfoo into a folder of its own (`npm install promptfoo`). A tool that
cannot be installed or run is reported as such, and the part goes on with the others.

Every tool gets the same generated cases (receipts of ~600 characters, one expected answer, an exact-match scorer)
and the same zero-latency server (bench/servers.py), at concurrency 64, caching off, each as a command line in a
process of its own, as a user would run it: `inspect eval bench/peers/inspect_task.py ...`,
`promptfoo eval -c promptfooconfig.yaml ...`, `harness run SUITE --cache off` (which also writes its report), and
the raw aiohttp client (`python -m bench.clients`, non-streamed) for the physical limit. Each is run on 1 case (its
start-up: interpreter, imports, config, first request, writing its results) and on N cases; cases/s is
(N - 1) / (wall time of N - wall time of 1), client CPU per case likewise from the process's (and its children's)
CPU time, and cases/s including start-up is N / wall time of N. Inspect AI and promptfoo do not stream: the server
answers them with its non-streamed JSON body; the harness streams.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, log, summary, target

HERE = Path(__file__).resolve().parent
ENV_DIR = ROOT / "runs" / "bench" / "peers-env"
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600
TARGET_VS_PROMPTFOO = 10.0  # harness cases/s over promptfoo's, concurrency 64 (issue 8)
TARGET_VS_INSPECT = 20.0  # over Inspect AI's
PROMPT = "Read this receipt and say, in one sentence, what the total is, where and when it was paid.\n\nReceipt:\n{}\n"


def timed(command: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
          timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Run `command`; its wall time and CPU time (user + system of it and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        rc, out = proc.returncode, (proc.stdout or "") + (proc.stderr or "")
    except subprocess.TimeoutExpired as exc:
        rc, out = -1, f"timed out after {timeout:.0f} s: {(exc.stderr or b'')[-500:]!r}"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rc": rc, "output": out[-3000:]}


def install_inspect(env_dir: Path) -> tuple[Path | None, str | None, str]:
    """A virtual environment with inspect-ai (and the openai package its OpenAI-compatible provider uses)."""
    venv = env_dir / "inspect-venv"
    inspect = venv / "bin" / "inspect"
    note = ""
    if not inspect.exists():
        log("peers: installing inspect-ai into a throwaway virtual environment")
        start = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                           timeout=120)
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "inspect-ai", "openai"], check=True,
                           capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            return None, None, f"could not install inspect-ai: {type(exc).__name__} {str(detail)[-300:]}"
        note = f"installed in {time.perf_counter() - start:.0f} s"
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import inspect_ai; print(inspect_ai.__version__)"],
                             capture_output=True, text=True).stdout.strip() or None
    return inspect, version, note


def install_promptfoo(env_dir: Path) -> tuple[Path | None, str | None, str]:
    """promptfoo from npm, in a folder of its own."""
    folder = env_dir / "promptfoo"
    binary = folder / "node_modules" / ".bin" / "promptfoo"
    note = ""
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            return None, None, "npm is not installed (apt-get install npm)"
        log("peers: installing promptfoo into a throwaway folder (npm)")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), "promptfoo"],
                           check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            return None, None, f"could not install promptfoo: {type(exc).__name__} {str(detail)[-300:]}"
        note = f"installed in {time.perf_counter() - start:.0f} s"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **_promptfoo_env(env_dir)}).stdout.strip().splitlines()
    return binary, (version[-1] if version else None), note


def _promptfoo_env(home: Path) -> dict[str, str]:
    return {"PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1", "PROMPTFOO_CONFIG_DIR": str(home),
            "PROMPTFOO_DISABLE_SHARING": "1", "PROMPTFOO_CACHE_ENABLED": "false", "NO_COLOR": "1",
            # its debug log file's writer throws after the results are written (winston, Node 20): not wanted anyway
            "PROMPTFOO_DISABLE_DEBUG_LOG": "1", "PROMPTFOO_DISABLE_ERROR_LOG": "1"}


def rendered_cases(suite_dir: Path) -> list[dict[str, str]]:
    """(id, user message, expected answer) of each generated case: what every tool is sent and must answer."""
    cases = []
    for line in (suite_dir / "cases.jsonl").read_text().splitlines():
        row = json.loads(line)
        cases.append({"id": row["id"], "text": row["text"], "input": PROMPT.format(row["text"]), "target": row["gold"]})
    return cases


def rate(one: dict[str, Any], full: dict[str, Any], n: int) -> dict[str, Any]:
    """Cases/s and CPU per case past start-up, from a 1-case run and an n-case run."""
    extra_wall = full["wall_s"] - one["wall_s"]
    return {
        "startup_s": one["wall_s"], "wall_s": full["wall_s"],
        "cases_per_s": (n - 1) / extra_wall if extra_wall > 0 else None,
        "cases_per_s_with_startup": n / full["wall_s"],
        "cpu_ms_per_case": (full["cpu_s"] - one["cpu_s"]) * 1000 / (n - 1),
    }


async def run_peers(settings: Any, tmp: Path, done: dict[str, Any]) -> dict[str, Any]:
    from bench import servers, workload

    n = settings.peer_cases
    ENV_DIR.mkdir(parents=True, exist_ok=True)
    tools: dict[str, dict[str, Any]] = {}
    with servers.ServerProcess("zero") as server:
        url = server.base_url
        folders = {}
        for size in (1, n):
            folders[size] = workload.write_suite(tmp / f"peers-{size}", size, base_url=url)
        cases = {size: rendered_cases(folder) for size, folder in folders.items()}
        runners = {
            "harness": _harness(folders, tmp),
            "raw": _raw(url),
            "inspect": _inspect(cases, url, tmp),
            "promptfoo": _promptfoo(cases, url, tmp),
        }
        log("peers: installing what is missing")
        install_inspect(ENV_DIR)
        install_promptfoo(ENV_DIR)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
        names = list(runners)
        for rep in range(settings.reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                if runs[name] and "cases_per_s" not in runs[name][-1]:
                    continue  # failed before: not again
                try:
                    x = runners[name](n)
                except Exception as exc:  # a tool that cannot run is reported, and the others go on
                    x = {"note": f"{type(exc).__name__}: {exc}"[:400]}
                runs[name].append(x)
                log(f"peers rep {rep + 1}: {name}: {x.get('cases_per_s') or 0:.0f} cases/s, start-up "
                    f"{x.get('startup_s') or 0:.1f} s, {x.get('cpu_ms_per_case') or 0:.2f} ms CPU/case "
                    f"{x.get('note') or ''}")
    for name, outs in runs.items():
        ok = [o for o in outs if "cases_per_s" in o]
        tools[name] = {key: summary([o.get(key) for o in ok]) for key in
                       ("cases_per_s", "cases_per_s_with_startup", "cpu_ms_per_case", "startup_s", "wall_s")}
        last = outs[-1] if outs else {}
        tools[name].update(passed=last.get("passed"), version=last.get("version"), note=last.get("note"))
    ratios = {}
    for name in ("promptfoo", "inspect", "raw"):
        ratios[f"harness/{name}"] = summary([
            h["cases_per_s"] / o["cases_per_s"] if h.get("cases_per_s") and o.get("cases_per_s") else None
            for h, o in zip(runs["harness"], runs[name], strict=False)])
    return {
        "cases": n, "concurrency": 64, "reps": settings.reps, "tools": tools, "ratios": ratios,
        "method": __doc__.split("\n\n", 2)[2].replace("\n", " "),
        "targets": [
            target("peers: harness / promptfoo cases/s, c=64", ratios["harness/promptfoo"]["median"], ">=",
                   TARGET_VS_PROMPTFOO, "×", note=_why(tools, "promptfoo", ratios)),
            target("peers: harness / Inspect AI cases/s, c=64", ratios["harness/inspect"]["median"], ">=",
                   TARGET_VS_INSPECT, "×", note=_why(tools, "inspect", ratios)),
        ],
    }


def _why(tools: dict[str, Any], name: str, ratios: dict[str, Any]) -> str:
    if ratios[f"harness/{name}"]["median"] is None:
        return str(tools.get(name, {}).get("note") or tools.get("harness", {}).get("note") or "")
    with_startup = [tools[x]["cases_per_s_with_startup"]["median"] for x in ("harness", name)]
    if None in with_startup:
        return ""
    return f"start-up included: {with_startup[0] / with_startup[1]:.1f}×"


def _checked(name: str, result: dict[str, Any]) -> dict[str, Any]:
    if result["rc"] != 0:
        raise RuntimeError(f"{name} exited with {result['rc']}: {result['output'][-600:]}")
    return result


def _harness(folders: dict[int, Path], tmp: Path) -> Any:
    harness = Path(sys.executable).with_name("harness")
    command = [str(harness)] if harness.exists() else [sys.executable, "-m", "harness.cli"]

    def run(n: int) -> dict[str, Any]:
        def once(size: int, db: Path) -> dict[str, Any]:
            for old in db.parent.glob(db.name + "*"):  # a fresh file each time, as for the other tools
                old.unlink()
            return _checked("harness", timed([*command, "run", str(folders[size]), "--limit", "all", "--db", str(db),
                                              "--cache", "off", "--no-progress", "--reports", str(tmp / "reports")]))

        one = once(1, tmp / "peers-harness-1.duckdb")
        db = tmp / "peers-harness.duckdb"
        full = once(n, db)
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        passed = con.execute("SELECT count(*) FROM scores WHERE metric = 'case_pass' AND passed").fetchall()[0][0]
        con.close()
        from importlib.metadata import version

        return {**rate(one, full, n), "passed": passed, "version": version("shadow-harness"),
                "note": "streamed; writes DuckDB and the HTML report"}

    return run


def _raw(url: str) -> Any:
    def run(n: int) -> dict[str, Any]:
        command = [sys.executable, "-m", "bench.clients", url, "--concurrency", "64", "--no-stream"]
        one = _checked("raw", timed([*command, "--requests", "1"], cwd=ROOT))
        full = _checked("raw", timed([*command, "--requests", str(n)], cwd=ROOT))
        return {**rate(one, full, n), "passed": json.loads(full["output"].strip().splitlines()[-1])["ok"],
                "note": "not streamed; scores and stores nothing"}

    return run


def _inspect(cases: dict[int, list[dict[str, str]]], url: str, tmp: Path) -> Any:
    def run(n: int) -> dict[str, Any]:
        inspect, version, note = install_inspect(ENV_DIR)
        if inspect is None:
            return {"note": note}
        env = {"BENCH_BASE_URL": url, "BENCH_API_KEY": "bench", "INSPECT_LOG_DIR": str(tmp / "inspect-logs"),
               "INSPECT_DISPLAY": "none", "INSPECT_EVAL_MODEL": ""}
        results = {}
        for size, rows in cases.items():
            path = tmp / f"inspect-{size}.jsonl"
            path.write_text("".join(json.dumps({"id": r["id"], "input": r["input"], "target": r["target"]}) + "\n"
                                    for r in rows))
            results[size] = _checked("inspect", timed([
                str(inspect), "eval", "inspect_task.py", "-T", f"cases={path}",
                "--model", "openai-api/bench/bench-model", "--max-connections", "64", "--max-tokens", "20",
                "--temperature", "0", "--display", "none", "--log-dir", str(tmp / f"inspect-logs-{size}"),
            ], env=env, cwd=HERE))  # Inspect takes the task file relative to where it runs
        passed = _inspect_passed(inspect.with_name("python"), tmp / f"inspect-logs-{n}")
        return {**rate(results[1], results[n], n), "passed": passed, "version": version,
                "note": "; ".join(x for x in (note, "not streamed") if x)}

    return run


def _inspect_passed(python: Path, logs: Path) -> Any:
    code = ("import sys; from inspect_ai.log import list_eval_logs, read_eval_log\n"
            "log = read_eval_log(list_eval_logs(sys.argv[1])[0], header_only=True)\n"
            "m = log.results.scores[0].metrics\n"
            "value = (m.get('accuracy') or m.get('mean')).value\n"
            "print(round(value * log.results.completed_samples))")
    out = subprocess.run([str(python), "-c", code, str(logs)], capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def _promptfoo(cases: dict[int, list[dict[str, str]]], url: str, tmp: Path) -> Any:
    def run(n: int) -> dict[str, Any]:
        binary, version, note = install_promptfoo(ENV_DIR)
        if binary is None:
            return {"note": note}
        home = tmp / "promptfoo-home"
        home.mkdir(exist_ok=True)
        template = (HERE / "promptfooconfig.yaml").read_text()
        results = {}
        for size, rows in cases.items():
            tests = tmp / f"promptfoo-tests-{size}.csv"
            with open(tests, "w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["text", "__expected"])
                for r in rows:
                    writer.writerow([r["text"], r["target"]])
            config = tmp / f"promptfooconfig-{size}.yaml"
            config.write_text(template.replace("@BASE_URL@", url).replace("@TESTS@", str(tests))
                              .replace("@MAX_TOKENS@", "20"))
            output = tmp / f"promptfoo-results-{size}.json"
            result = timed([str(binary), "eval", "-c", str(config), "--no-cache", "--max-concurrency", "64",
                            "-o", str(output), "--no-progress-bar"], env=_promptfoo_env(home), cwd=tmp)
            if result["rc"] not in (0, 100) or not output.exists():  # 100: some assertions failed
                raise RuntimeError(f"promptfoo exited with {result['rc']}: {result['output'][-600:]}")
            results[size] = result
        stats = json.loads((tmp / f"promptfoo-results-{n}.json").read_text()).get("results", {}).get("stats", {})
        return {**rate(results[1], results[n], n), "passed": stats.get("successes"), "version": version,
                "note": "; ".join(x for x in (note, "not streamed") if x)}

    return run
