"""Part `startup` of `make bench`: how long each command takes from the shell prompt to its exit.

Commands, each in a fresh process as a user types it (the `harness` console script): `harness --help`,
`harness runs` (a file holding one run), `harness validate suites/invoices`, and a 1-case `harness run` of a
generated suite against the zero-latency server (bench/servers.py; cache off, a fresh DuckDB file each time, the
HTML report written), so that what is measured is start-up, not the model. Each is run once to warm the disk
cache, then `reps` times; the median and min-max of the wall times are reported. The commands run with Python
writing bytecode as it does by default (PYTHONDONTWRITEBYTECODE is left out of their environment), so that the
warm-up leaves the package's compiled modules behind as a user's first run does; without them each start compiles
the harness's ~60 modules again (about 0.1-0.2 s here).

Then each command once more under `python -X importtime`, summarised as the five costliest imports: the
top-level packages by the time spent running their modules (the "self" column summed over the package, so a
package is not charged for what it imports from another), with the first module that brought each in.

Run on its own: `python -m bench.startup [--reps N] [--record] [--before DIR]` (`--record` writes the result into
docs/benchmarks.json and .md; `--before DIR` also times the same commands with the `harness` package of another
checkout, DIR, first on PYTHONPATH, e.g. a `git worktree` of an older commit, shown beside the new figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import servers, workload
from bench.common import ROOT, log, record_part, summary, target

TARGET_COMMAND_S = 1.0  # --help, runs, validate (issue 21)
TARGET_RUN_S = 1.5  # a 1-case run
TOP_IMPORTS = 5
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}


def harness_command() -> list[str]:
    """The installed console script, as a user runs it (`python -m harness.cli` where there is none)."""
    script = Path(sys.executable).with_name("harness")
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


def wall(command: list[str], before: Any = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one run of `command` from the repository root (raises when it fails)."""
    if before is not None:
        before()
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}")
    return seconds


def import_summary(args: list[str], before: Any = None, top: int = TOP_IMPORTS,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """`harness ARGS` once under -X importtime: total import time and the `top` costliest packages."""
    if before is not None:
        before()
    # -P: the repository root (the working directory) is not put first on sys.path, so that the package found is
    # the one the console script finds (installed, or the checkout on PYTHONPATH for --before)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-P", "-m", "harness.cli", *args], cwd=ROOT,
                          env=env or ENV,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return summarise_importtime(proc.stderr, top)


def summarise_importtime(stderr: str, top: int = TOP_IMPORTS) -> dict[str, Any]:
    """From `-X importtime` output: the total (ms), and per top-level package the ms spent in its own modules and the
    module that first imported it (none shown where a function imported it as it ran)."""
    rows: list[tuple[int, int, str]] = []  # (self us, depth, module) in the order printed (children first)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own_us, _cumulative, name = line.split("|", 2)
        own = int(own_us.split(":")[1])
        body = name[1:]
        rows.append((own, (len(body) - len(body.lstrip())) // 2, body.strip()))
    by_package: Counter[str] = Counter()
    first: dict[str, int] = {}
    for i, (own, _depth, module) in enumerate(rows):
        package = module.split(".")[0]
        by_package[package] += own
        first.setdefault(package, i)

    def brought_by(i: int) -> str:
        depth, package = rows[i][1], rows[i][2].split(".")[0]
        for _own, d, module in rows[i + 1:]:
            if d < depth:
                depth = d
                if module.split(".")[0] != package:
                    return module
        return "(an import inside a function)"

    costliest = [{"package": p, "ms": us / 1000, "imported_by": brought_by(first[p])}
                 for p, us in by_package.most_common(top)]
    return {"total_ms": sum(own for own, _, _ in rows) / 1000, "costliest": costliest}


def measure(reps: int = 5, before_dir: Path | None = None) -> dict[str, Any]:
    """The part: wall times of the four commands and their import summaries (and, with `before_dir`, of the same
    commands run with the package of that checkout)."""
    cli = harness_command()
    with tempfile.TemporaryDirectory(prefix="shadow-startup-") as folder, servers.ServerProcess("zero") as server:
        tmp = Path(folder)
        suite = workload.write_suite(tmp / "one", 1, base_url=server.base_url)
        db = tmp / "one.duckdb"

        def fresh_db() -> None:
            for old in tmp.glob("one.duckdb*"):
                old.unlink()

        run_args = ["run", str(suite), "--db", str(db), "--cache", "off", "--no-progress", "--reports",
                    str(tmp / "reports")]
        commands: dict[str, tuple[list[str], Any]] = {
            "harness --help": (["--help"], None),
            "harness runs": (["runs", "--db", str(tmp / "listed.duckdb")], None),
            "harness validate suites/invoices": (["validate", "suites/invoices"], None),
            "harness run (1 case)": (run_args, fresh_db),
        }
        wall([*cli, *run_args[:3], str(tmp / "listed.duckdb"), *run_args[4:]])  # the file `harness runs` lists
        results: dict[str, Any] = {}
        old_env = {**ENV, "PYTHONPATH": str(before_dir)} if before_dir else None
        for name, (args, before) in commands.items():
            for env in ([None, old_env] if old_env else [None]):
                wall([*cli, *args], before, env)  # warm-up: the disk cache, Jinja's bytecode cache
            times, old_times = [], []
            for _ in range(reps):  # new and old back to back, so that both meet the same load
                times.append(wall([*cli, *args], before))
                if old_env:
                    old_times.append(wall([*cli, *args], before, old_env))
            results[name] = {"wall_s": summary(times), "imports": import_summary(args, before)}
            if old_env:
                results[name]["before"] = {"wall_s": summary(old_times),
                                           "imports": import_summary(args, before, env=old_env)}
            log(f"startup: {name}: median {statistics.median(times):.2f} s "
                f"({min(times):.2f}-{max(times):.2f}), imports {results[name]['imports']['total_ms']:.0f} ms"
                + (f"; before {statistics.median(old_times):.2f} s" if old_times else ""))
    limits = {name: TARGET_RUN_S if name.startswith("harness run ") else TARGET_COMMAND_S for name in results}
    return {
        "reps": reps, "command": "harness" if len(cli) == 1 else "python -m harness.cli", "commands": results,
        "before": _describe(before_dir) if before_dir else None,
        "targets": [target(f"start-up: {name}, wall time", r["wall_s"]["median"], "<=", limits[name], "s")
                    for name, r in results.items()],
    }


def _describe(folder: Path) -> str:
    """The commit of checkout `folder` (or the folder's name when it is not a git checkout: no path of this machine
    goes into the results)."""
    proc = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return proc.stdout.strip()[:80] if proc.returncode == 0 and proc.stdout.strip() else folder.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--record", action="store_true", help="write the result into docs/benchmarks.json and .md")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also time the commands with the harness package of checkout DIR (an older commit)")
    args = parser.parse_args(argv)
    if args.before and not (args.before / "harness" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no harness package there (a checkout of this repository)")
    result = measure(args.reps, args.before.resolve() if args.before else None)
    if args.record:
        from datetime import UTC, datetime

        result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"written: {record_part('startup', result)}")
    for row in result["targets"]:
        print(f"{row['measurement']}: {row['value']:.2f} s ({row['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
