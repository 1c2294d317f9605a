from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from harness.errors import SuiteError
from harness.suite import load_suite


def test_invoices_suite_loads_every_case_with_a_rendered_prompt():
    suite = load_suite(ROOT / "suites" / "invoices")
    assert suite.name == "invoices"
    assert len(suite.cases) == 300
    first = suite.cases[0]
    assert first.id == "sroie-train-006"
    assert first.line == 1
    assert first.gold["total"] == "327.00"
    assert "gold" not in first.input
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert "SOON HUAT MACHINERY ENTERPRISE" in first.messages[1]["content"]
    assert suite.response_schema["required"] == ["company", "date", "address", "total"]
    assert {p.role for p in suite.spec.providers} == {"incumbent", "candidate"}


def test_hash_changes_when_a_case_changes(mini_suite: Path):
    before = load_suite(mini_suite).hash
    cases = mini_suite / "cases.jsonl"
    cases.write_text(cases.read_text().replace("327.00", "328.00", 1))
    assert load_suite(mini_suite).hash != before


def _replace_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_unknown_key_in_suite_toml_names_file_and_key(mini_suite: Path):
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace("[prompt]\n", "[prompt]\ntemplat = 'x.j2'\n"))
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == f"{config}: unknown key 'prompt.templat'; remove it or check its spelling"


def test_missing_field_on_a_line_names_the_line(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    row = json.loads(cases.read_text().splitlines()[4])
    del row["text"]
    _replace_line(cases, 5, json.dumps(row))
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == f"{cases} line 5: missing field 'text'; prompt.j2 uses it"


def test_missing_gold_names_the_line_past_blank_lines(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    lines = cases.read_text().splitlines()
    row = json.loads(lines[2])
    del row["gold"]
    lines[2] = json.dumps(row)
    cases.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # blank line 2: row 3 is line 4
    with pytest.raises(SuiteError, match=r"cases.jsonl line 4: missing field 'gold'$"):
        load_suite(mini_suite)


def test_template_variable_that_no_case_has(mini_suite: Path):
    (mini_suite / "prompt.j2").write_text("{{ text }} from {{ vendor }}")
    with pytest.raises(SuiteError, match=r"cases.jsonl line 1: missing field 'vendor'; prompt.j2 uses it$"):
        load_suite(mini_suite)


def test_template_attribute_that_a_case_lacks(mini_suite: Path):
    (mini_suite / "prompt.j2").write_text("{{ text }} {{ gold_found_in_text.phone }}")
    with pytest.raises(SuiteError, match=r"line 1: prompt.j2: .*'phone'.*add it to the case or the template$"):
        load_suite(mini_suite)


def test_malformed_json_line(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    _replace_line(cases, 3, '{"id": "x", "text": ')
    with pytest.raises(SuiteError, match=r"cases.jsonl line 3: not valid JSON"):
        load_suite(mini_suite)


def test_duplicate_ids(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    lines = cases.read_text().splitlines()
    _replace_line(cases, 6, lines[1])
    with pytest.raises(SuiteError, match=r"line 6: duplicate id 'sroie-train-008' \(first seen at .* line 2\)"):
        load_suite(mini_suite)


def test_template_syntax_error(mini_suite: Path):
    (mini_suite / "prompt.j2").write_text("line one\n{{ text }\n")
    with pytest.raises(SuiteError, match=r"prompt.j2 line 2: template syntax error"):
        load_suite(mini_suite)


def test_bad_provider_id_and_missing_candidate(mini_suite: Path):
    config = mini_suite / "suite.toml"
    original = config.read_text()
    config.write_text(original.replace('id = "openai:gpt-4o-mini"', 'id = "gpt-4o-mini"'))
    with pytest.raises(SuiteError, match=r"providers\[1\]\.id: provider id 'gpt-4o-mini' must look like 'kind:model'"):
        load_suite(mini_suite)
    config.write_text(original.replace('role = "candidate"', 'role = "incumbent"'))
    with pytest.raises(SuiteError, match=r"providers: name at least one provider with role = 'candidate'"):
        load_suite(mini_suite)


CSV_SUITE = """
name = "labels"
task = "classification"
[cases]
source = "cases.csv"
gold_field = "label"
[output]
format = "text"
[[scorers]]
kind = "exact"
[[providers]]
id = "local:smollm2-135m"
role = "candidate"
"""


def test_csv_values_stay_strings_and_lines_are_physical(tmp_path: Path):
    (tmp_path / "suite.toml").write_text(CSV_SUITE)
    (tmp_path / "prompt.j2").write_text("Ticket: {{ text }}")
    (tmp_path / "cases.csv").write_text('id,text,label\n007,"card lost\nplease help",3.00\n008,"fine",card_arrival\n')
    suite = load_suite(tmp_path)
    assert [(c.id, c.gold, c.line) for c in suite.cases] == [("007", "3.00", 2), ("008", "card_arrival", 4)]
    assert suite.cases[0].messages[-1]["content"] == "Ticket: card lost\nplease help"
    (tmp_path / "cases.csv").write_text('id,text,label\na1,"SHOP A\nTOTAL 3.00",x\na2,,y\n')
    with pytest.raises(SuiteError, match=r"cases.csv line 4: missing field 'text'; prompt.j2 uses it$"):
        load_suite(tmp_path)
    (tmp_path / "cases.csv").write_text('id,text,label\na1,hello\n')
    with pytest.raises(SuiteError, match=r"cases.csv line 2: 2 cells where the header has 3$"):
        load_suite(tmp_path)


def test_jsonl_values_arrive_exactly_as_written(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    row = json.loads(cases.read_text().splitlines()[0])
    row["gold"]["date"] = "2019-01-11"
    row["gold"]["total"] = ["6.00", "6"]
    _replace_line(cases, 1, json.dumps(row))
    gold = load_suite(mini_suite).cases[0].gold
    assert gold["date"] == "2019-01-11" and gold["total"] == ["6.00", "6"]


def test_gold_must_carry_every_scored_field(mini_suite: Path):
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text().replace('total = "amount"', 'totl = "amount"'))
    with pytest.raises(SuiteError, match=r"cases.jsonl line 1: gold has no field 'totl', which scorers.fields names"):
        load_suite(mini_suite)


def test_cli_exits_2_with_one_line(mini_suite: Path):
    config = mini_suite / "suite.toml"
    config.write_text("bogus = 1\n" + config.read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate", str(mini_suite)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {config}: unknown key 'bogus'; remove it or check its spelling\n"
    assert proc.stdout == ""
