from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from harness.providers.base import Completion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))


def closed_port_url() -> str:
    """An OpenAI-style base URL on a loopback port nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch) -> Path:
    """The stand-in `vllm` command (tests/fake_vllm.py) first on PATH."""
    script = tmp_path / "bin" / "vllm"
    script.parent.mkdir()
    target = str(Path(__file__).with_name("fake_vllm.py"))
    script.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({target!r}, run_name='__main__')\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return script


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
