"""Start-up stays cheap: each command imports only what it needs.

Every command runs in a fresh interpreter, which reports the modules it imported; a command whose import set grows
a heavy library it does not need fails here (the seconds it costs are measured by `make bench`, part startup). The
heavy libraries, by what they cost to import on the reference machine: the anthropic SDK (1.2 s), scipy (up to a
second), the openai SDK (0.7 s), matplotlib (0.5 s), pandas (0.4 s), scikit-learn, nltk (rouge-score), aiohttp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, copy_invoices
from openai_server import OpenAIServer, Reply

# runs `harness ARGS...` (argv[2:]) and writes the names of the modules it imported to argv[1]
PROBE = """
import json, sys
from harness.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""

SDKS = {"anthropic", "openai"}
SCIENCE = {"scipy", "sklearn", "nltk", "rouge_score", "matplotlib"}
STORE = {"duckdb", "pandas", "pyarrow", "numpy"}


def imported(tmp_path: Path, *args: str, cwd: Path = ROOT) -> tuple[int, set[str]]:
    """(exit code, top-level packages imported) of `harness ARGS` in a fresh interpreter without API keys."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert out.exists(), proc.stderr
    found = json.loads(out.read_text())
    return found["code"], {name.split(".")[0] for name in found["modules"]}


def test_help_imports_no_library(tmp_path: Path) -> None:
    code, modules = imported(tmp_path, "--help")
    assert code == 0
    assert not modules & (SDKS | SCIENCE | STORE | {"aiohttp", "jinja2"})


@pytest.mark.parametrize("suite", sorted(p.name for p in (ROOT / "suites").iterdir() if (p / "suite.toml").is_file()))
def test_validate_imports_no_sdk_store_or_science(tmp_path: Path, suite: str) -> None:
    code, modules = imported(tmp_path, "validate", f"suites/{suite}")
    assert code == 0
    assert not modules & (SDKS | SCIENCE | STORE | {"aiohttp"})


def test_runs_and_a_one_case_run_import_only_what_a_run_needs(tmp_path: Path) -> None:
    suite = copy_invoices(tmp_path, 1)
    db = tmp_path / "s.duckdb"
    with OpenAIServer(lambda body: Reply(text='{"total": "1.00"}')) as server:
        code, modules = imported(tmp_path, "run", str(suite), "--db", str(db), "--reports", str(tmp_path / "r"),
                                 "--base-url", server.base_url, "--no-progress", "--cache", "off")
        assert server.requests, "the candidate was not called"
    assert code == 0
    # the local candidate is served over aiohttp; the incumbent (no key) is skipped without loading its SDK
    assert {"aiohttp", "duckdb", "pandas", "jinja2"} <= modules
    assert not modules & (SDKS | SCIENCE)

    code, modules = imported(tmp_path, "runs", "--db", str(db))
    assert code == 0
    assert "duckdb" in modules
    assert not modules & (SDKS | SCIENCE | {"pandas", "pyarrow", "aiohttp"})


def test_an_sdk_is_imported_when_its_provider_is_used(tmp_path: Path) -> None:
    """The other side of the rule: a provider of kind `openai` does load its SDK (the probe sees imports)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from harness.providers.openai_client import OpenAISDK; "
         "OpenAISDK('p', 'm', 'http://127.0.0.1:9/v1', 'k'); print('openai' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.stdout.strip() == "True", proc.stderr


def test_import_harness_loads_nothing_until_a_name_is_used_and_every_name_resolves(tmp_path: Path) -> None:
    """`harness/__init__.py` lists its exports three times (the lazy map, `__all__`, the imports for type checkers);
    they must agree, and each name must resolve to what its module defines."""
    code = ("import json, sys, harness\n"
            "before = sorted(m for m in sys.modules if m.startswith('harness.'))\n"
            "resolved = {name: getattr(harness, name).__module__ for name in harness.__all__ "
            "if hasattr(getattr(harness, name), '__module__')}\n"
            "print(json.dumps({'before': before, 'all': sorted(harness.__all__), "
            "'exports': sorted(harness._EXPORTS), 'resolved': resolved, 'map': harness._EXPORTS}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["before"] == []
    assert found["all"] == found["exports"] and len(found["all"]) > 30
    source = (ROOT / "harness" / "__init__.py").read_text().split("if TYPE_CHECKING:", 1)[1]
    for name, module in found["map"].items():
        assert name in source, f"{name} is not imported for type checkers"
        assert found["resolved"].get(name, module) == module, name
