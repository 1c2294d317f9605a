"""`make bench` keeps working: a quick run of its storage part writes its results (no speed is asserted here;
speed goals are measured by the benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_the_quick_storage_benchmark_runs_and_writes_its_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "storage", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    storage = results["parts"]["storage"]
    assert storage["rows_per_s"] > 0
    assert (tmp_path / "benchmarks.md").read_text().count("storage") >= 1
