"""The suite authoring guide (suites/README.md), followed literally.

The files of its worked example are written out exactly as the guide shows them, validated, and run end to end
against a local OpenAI-compatible server with no Python written for the suite; its error examples are reproduced;
and the guide must name every table and key of `suite.toml` and every scorer kind with its keys, so that it
cannot go stale silently when the config grows.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT
from openai_server import OpenAIServer, Reply
from pydantic import BaseModel

from harness.cli import main
from harness.suite.load import load_suite
from harness.suite.spec import SCORER_KEYS, SuiteSpec

GUIDE = ROOT / "suites" / "README.md"
# `<!-- file: suites/NAME/PATH -->` directly above a fenced block: that block is the file's whole content
FILE_BLOCK = re.compile(r"^<!-- file: suites/([\w.-]+)/([\w./-]+) -->\n```[^\n]*\n(.*?)^```$", re.M | re.S)
KEY_VARIABLES = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "VLLM_BASE_URL",
    "VLLM_API_KEY", "OPENAI_COMPATIBLE_BASE_URL", "OPENAI_BASE_URL",
)


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def example_files() -> tuple[str, dict[str, str]]:
    """The worked example: its suite name and {path inside the suite: content}, as the guide shows them."""
    found: dict[str, dict[str, str]] = {}
    for name, path, content in FILE_BLOCK.findall(guide_text()):
        assert path not in found.setdefault(name, {}), f"the guide shows suites/{name}/{path} twice"
        found[name][path] = content
    assert len(found) == 1, f"the guide should build exactly one example suite, found {sorted(found)}"
    return next(iter(found.items()))


def write_example(root: Path) -> Path:
    """Write the example's files under `root/suites/NAME`, as a reader following the guide would."""
    name, files = example_files()
    suite = root / "suites" / name
    for path, content in files.items():
        target = suite / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return suite


def cases_of(suite: Path) -> list[dict]:
    return [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in KEY_VARIABLES:  # no incumbent API is called and the candidate goes to the test server
        monkeypatch.delenv(name, raising=False)
    return write_example(tmp_path)


def test_the_example_is_data_only() -> None:
    _, files = example_files()
    assert {"suite.toml", "cases.jsonl", "prompt.j2", "README.md"} <= set(files), sorted(files)
    assert not [path for path in files if path.endswith(".py")], "the guide promises a suite with no Python"


def test_the_example_validates(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(example)]) == 0
    out = capsys.readouterr().out
    assert f"is valid: {len(cases_of(example))} cases" in out
    # the guide shows what `harness validate` prints for the example (the hash changes with any edit of its files)
    shown = out.splitlines()[0].split(": ", 1)[1]
    assert shown in guide_text(), f"paste the new output of `harness validate suites/...` into the guide: {shown}"


def test_the_example_runs_end_to_end(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = cases_of(example)
    suite = load_suite(example)
    wrong = rows[1]
    assert str(wrong["gold"]["total"]) != "1.00"

    def responder(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        row = next(r for r in rows if r["text"] in prompt)
        answer = dict(row["gold"])
        if row is wrong:
            answer["total"] = "1.00"  # one field wrong: the case must fail, whatever the other scorers say
        return Reply(text=json.dumps(answer))

    db, reports = tmp_path / "s.duckdb", tmp_path / "r"
    with OpenAIServer(responder) as server:
        assert main(["run", str(example), "--db", str(db), "--reports", str(reports), "--base-url", server.base_url,
                     "--no-progress"]) == 0
    assert len(server.requests) == len(rows)
    assert "skipped: OPENAI_API_KEY is not set" in capsys.readouterr().out

    con = duckdb.connect(str(db), read_only=True)
    try:
        (run_id, status, n_cases), = con.execute("SELECT run_id, status, n_cases FROM runs").fetchall()
        per_case = con.execute(
            "SELECT case_id, count(*), count(error) FROM responses WHERE run_id = ? GROUP BY case_id", [run_id]
        ).fetchall()
        passed = dict(con.execute(
            "SELECT case_id, bool_and(passed) FROM scores WHERE run_id = ? AND metric = 'case_pass' GROUP BY case_id",
            [run_id],
        ).fetchall())
        scorers = {row[0] for row in con.execute("SELECT DISTINCT scorer FROM scores WHERE run_id = ?",
                                                 [run_id]).fetchall()}
        total = con.execute(
            "SELECT detail->>'$.outcome' FROM scores WHERE run_id = ? AND case_id = ? AND metric = 'field.total'",
            [run_id, wrong["id"]],
        ).fetchall()
    finally:
        con.close()

    assert status == "completed" and n_cases == len(rows)
    assert sorted(per_case) == sorted((row["id"], 1, 0) for row in rows)  # one answer per case, none failed
    assert scorers == {s.name for s in suite.spec.scorers}
    assert passed == {row["id"]: row is not wrong for row in rows}
    assert total == [("wrong",)]
    report = reports / suite.name / run_id / "index.html"
    assert report.is_file() and wrong["id"] in report.read_text(encoding="utf-8")
    assert not list(example.rglob("*.py")), "no Python in the suite folder, before or after a run"


def _misspell_dayfirst(suite: Path) -> None:
    config = suite / "suite.toml"
    assert "\ndayfirst = " in config.read_text()
    config.write_text(config.read_text().replace("\ndayfirst = ", "\nday_first = ", 1))


def _rename_a_field(suite: Path) -> None:
    rows = cases_of(suite)
    rows[2]["notice"] = rows[2].pop("text")
    (suite / "cases.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("breakage", [_misspell_dayfirst, _rename_a_field], ids=["misspelt-key", "missing-field"])
def test_the_error_examples_are_the_real_messages(breakage, tmp_path, monkeypatch, capsys) -> None:
    """The guide breaks a copy of its example in these two ways and quotes what `harness validate` says."""
    suite = write_example(tmp_path)
    breakage(suite)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(suite.relative_to(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert err.strip() in guide_text(), f"the guide should quote the real message:\n{err}"


def _models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (`X`, `X | None`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _toml_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def test_the_guide_names_every_table_and_key_of_suite_toml() -> None:
    text = guide_text()
    missing = []
    for name, field in SuiteSpec.model_fields.items():
        models = _models(field.annotation)
        if not models:
            if f"`{name}`" not in text:
                missing.append(name)
            continue
        is_list = typing.get_origin(field.annotation) is list
        header = f"[[{name}]]" if is_list else f"[{name}]"
        if header not in text:
            missing.append(header)
        for key in _toml_keys(models[0]):
            if f"`{key}`" not in text:
                missing.append(f"{header} {key}")
    assert not missing, f"suites/README.md does not mention: {missing}"
    for table in ("cases", "prompt", "context", "output", "scorers", "params", "providers"):
        assert table in SuiteSpec.model_fields and (f"[{table}]" in text or f"[[{table}]]" in text)


def test_the_guide_names_every_scorer_kind_and_its_keys() -> None:
    text = guide_text()
    missing = []
    for kind, keys in SCORER_KEYS.items():
        if f'kind = "{kind}"' not in text and f"`{kind}`" not in text:
            missing.append(kind)
        # each kind has a section of its own, headed by its name, which lists its keys
        section = re.search(rf"^#{{2,6}} `{re.escape(kind)}`\n.*?(?=^#{{2,6}} |\Z)", text, re.M | re.S)
        if section is None:
            missing.append(f"a section headed `{kind}`")
            continue
        missing += [f"{kind}.{key}" for key in sorted(keys) if f"`{key}`" not in section.group()]
    assert not missing, f"suites/README.md does not mention: {missing}"


def test_the_guide_names_every_key_of_profile_toml() -> None:
    from harness.suite.profile import profile_keys

    text = guide_text()
    missing = [f"[{table}] {key}" if table else key for table, keys in profile_keys().items() for key in keys
               if (f"`{key}`" not in text and f"`[{key}]`" not in text) or (table and f"`[{table}]`" not in text)]
    assert not missing, f"suites/README.md does not mention: {missing}"


CONVERTER = re.compile(r"^<!-- converter: cuad -->\n```python\n(.*?)^```$", re.M | re.S)


def test_the_guides_cuad_converter_makes_a_suite_that_validates(tmp_path: Path, monkeypatch, capsys) -> None:
    """The converter the guide shows, run as shown on rows in CUAD's release shape (../shared/data/README.md: the
    clauses as a list), gives a cases file the bundled contracts suite validates and scores with."""
    [code] = CONVERTER.findall(guide_text())
    (tmp_path / "to_cases.py").write_text(code, encoding="utf-8")
    text = "This Agreement is governed by the laws of the State of Delaware. Supp l i e r shall deliver."
    start = text.index("the laws")
    import tomllib

    categories = tomllib.loads((ROOT / "suites" / "contracts" / "suite.toml").read_text())["prompt"]["vars"][
        "categories"]
    span = {"text": text[start:start + 39], "start": start, "end": start + 39, "annotation": "x", "match": "exact"}
    rows = [{"id": f"c{i}", "title": "t", "contract_type": "Supply", "text": text, "clauses": [
        {"category": name, "question": "q", "description": "d", "answer_format": "a",
         "present": name == "Governing Law", "answer": "Delaware" if name == "Governing Law" else "",
         "spans": [span] if name == "Governing Law" else []}
        for name in [*categories, "Source Code Escrow"]
    ]} for i in range(2)]
    source = tmp_path / "cuad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    suite = tmp_path / "suites" / "mycontracts"
    import shutil

    shutil.copytree(ROOT / "suites" / "contracts", suite)
    monkeypatch.chdir(tmp_path)
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["to_cases.py", str(source), str(suite / "cases.jsonl")])
    runpy.run_path(str(tmp_path / "to_cases.py"), run_name="__main__")
    converted = cases_of(suite)
    assert converted[0]["gold"]["Governing Law"] == {"present": True, "answer": "Delaware",
                                                     "spans": [{"start": start, "end": start + 39}]}
    assert main(["validate", str(suite)]) == 0
    assert "suite 'contracts' is valid: 2 cases" in capsys.readouterr().out
    loaded = load_suite(suite)
    assert loaded.cases[0].gold["Parties"]["present"] is False
