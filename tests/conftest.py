from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.providers import Completion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


def copy_suite(tmp_path: Path, name: str, n_cases: int) -> Path:
    """A copy of suite `name` with its first `n_cases` cases, in a folder a test may break."""
    target = tmp_path / name
    shutil.copytree(ROOT / "suites" / name, target)
    lines = (target / "cases.jsonl").read_text().splitlines()[:n_cases]
    (target / "cases.jsonl").write_text("\n".join(lines) + "\n")
    return target


def copy_invoices(tmp_path: Path, n_cases: int) -> Path:
    """A copy of the invoices suite with its first `n_cases` cases, in a folder a test may break; a run of it
    takes every one of them (no default_limit)."""
    target = copy_suite(tmp_path, "invoices", n_cases)
    config = target / "suite.toml"
    config.write_text("\n".join(x for x in config.read_text().splitlines() if not x.startswith("default_limit")))
    return target


@pytest.fixture
def mini_suite(tmp_path: Path) -> Path:
    """A copy of the invoices suite with its first 6 cases."""
    return copy_invoices(tmp_path, 6)


def gold_of(suite_dir: Path) -> dict[str, dict]:
    """case id -> gold object, read straight from the cases file."""
    rows = [json.loads(line) for line in (suite_dir / "cases.jsonl").read_text().splitlines() if line.strip()]
    return {row["id"]: row["gold"] for row in rows}


def answer(text: str, error: str | None = None) -> Completion:
    """A completed model answer with made-up measurements, for scorer tests."""
    return Completion(text=text, model="m", input_tokens=1, output_tokens=1, ttft_ms=1.0, latency_ms=2.0,
                      finish_reason="stop", error=error)
