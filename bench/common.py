"""What the benchmark modules share: the repository root, summaries of repeated measurements, the targets
table's rows, the machine's description, and writing results into docs/benchmarks.json and .md."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import report_doc

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PACKAGES = ("shadow-harness", "aiohttp", "openai", "httpx", "duckdb", "pyarrow", "pandas", "llama_cpp_python",
            "jinja2", "pydantic")


def summary(values: list[float | None]) -> dict[str, Any]:
    """Median and min-max of repeated measurements (None values left out)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "n": len(kept)}


def percentile(values: list[float], p: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, p)) if values else None


def target(name: str, value: float | None, op: str, limit: float, unit: str, *, digits: int = 2,
           note: str = "") -> dict[str, Any]:
    """One row of the targets table: met, missed (and by how much), or not measured."""
    if value is None:
        return {"measurement": name, "target": f"{op} {fmt(limit, digits)} {unit}".strip(), "value": None,
                "unit": unit, "met": None, "status": "not measured", "note": note}
    met = value >= limit if op == ">=" else value <= limit
    if met:
        status = "met"
    elif op == ">=":
        status = f"missed by {1 - value / limit:.0%} (needs {limit / value:.1f}× more)" if value > 0 else "missed"
    else:
        status = f"missed by {fmt(value - limit, digits)} {unit}".rstrip() + (
            f" ({value / limit:.1f}× the limit)" if limit > 0 and unit != "×" else "")
    return {"measurement": name, "target": f"{op} {fmt(limit, digits)} {unit}".strip(), "value": value,
            "unit": unit, "met": met, "status": status, "note": note}


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, Python and the versions of the packages that matter here."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1e6, 1)
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    from harness.run.runner import git_revision

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "platform": f"{platform.system()} "
        f"{platform.release()} {platform.machine()}", "python": platform.python_version(), "packages": versions,
        "git_revision": git_revision(ROOT), "load_average": os.getloadavg(),
    }


def rss_mb() -> float | None:
    """This process's resident set size now, in MB."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return None


def peak_rss_kib() -> int:
    """This process's peak resident set size, in KiB: `VmHWM`, the high-water mark of its own memory since it
    started. Not `ru_maxrss`, which on Linux a child also inherits from the process that started it (the parent's
    peak, when started through vfork, as `subprocess` does), so that a child's figure would be its parent's
    whenever the parent had been larger; `ru_maxrss` only where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_docs(data: dict[str, Any], out: Path) -> Path:
    """docs/benchmarks.json (every part's numbers) and docs/benchmarks.md (the tables) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    md = out / "benchmarks.md"
    md.write_text(report_doc.markdown(data))
    return md


def record_part(name: str, result: dict[str, Any], out: Path = ROOT / "docs") -> Path:
    """Merge one part's result into `out`/benchmarks.json and rewrite benchmarks.md (for a part run on its
    own: `python -m bench.report_scale`, `python -m bench.llama_build --record`)."""
    data = load_results(out / "benchmarks.json")
    data.setdefault("parts", {})[name] = result
    data.setdefault("machine", machine())
    return write_docs(data, out)


def load_results(path: Path) -> dict[str, Any]:
    """The results file at `path` ({} when there is none, or it is of an older layout)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if "parts" in data else {}  # a file of the old layout is replaced


def cpu_s(pid: int) -> float | None:
    """CPU time (user + system, every thread) process `pid` and the processes under it (a proxy's mirror process)
    have used so far, from /proc; None when `pid` is gone."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    if pid not in stats:
        return None
    tree, grew = {pid}, True
    while grew:
        below = {p for p, fields in stats.items() if int(fields[1]) in tree} - tree
        grew = bool(below)
        tree |= below
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree) / os.sysconf("SC_CLK_TCK")


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """Stop `process` (SIGTERM, then SIGKILL after 10 s) and close its stdout pipe, if it has one."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
