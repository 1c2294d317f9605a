from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from harness.errors import SuiteError
from harness.suite.load import load_suite


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


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)


def test_a_byte_that_is_not_utf8_names_the_file_and_line_in_validate_and_run(mini_suite: Path, tmp_path: Path):
    """A Latin-1 'é' on line 3 of the cases: one line naming the file, the line and the fix, exit 2, from
    `validate` and from `run` (which stores nothing)."""
    cases = mini_suite / "cases.jsonl"
    lines = cases.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"text": "', b'"text": "caf\xe9 ', 1)
    cases.write_bytes(b"\n".join(lines))
    column = lines[2].index(b"\xe9") + 1
    expected = (f"error: {cases} line 3: not UTF-8 text (byte 0xe9 at byte column {column}); save the file as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8)\n")
    for args in (["validate", str(mini_suite)], ["run", str(mini_suite), "--db", str(tmp_path / "s.duckdb")]):
        proc = _harness(*args)
        assert (proc.returncode, proc.stderr, proc.stdout) == (2, expected, ""), args
    assert not (tmp_path / "s.duckdb").exists()


@pytest.mark.parametrize("name", ["cases.json", "cases.csv", "suite.toml", "prompt.j2", "schema.json"])
def test_every_text_file_of_a_suite_names_the_line_of_a_byte_that_is_not_utf8(mini_suite: Path, name: str):
    config = mini_suite / "suite.toml"
    if name == "cases.json":
        rows = [json.loads(line) for line in (mini_suite / "cases.jsonl").read_text().splitlines()]
        (mini_suite / name).write_text(json.dumps(rows, indent=1))
        _edit(config, 'source = "cases.jsonl"', 'source = "cases.json"')
    if name == "cases.csv":
        (mini_suite / "prompt.j2").write_text("{{ text }}")
        config.write_text(CSV_SUITE)
        (mini_suite / name).write_text('id,text,gold\na,"x",y\n')
    path = mini_suite / name
    lines = path.read_bytes().split(b"\n")
    # the stray byte goes inside the first quoted text after line 1: every one of these files has some
    number = next(i for i, line in enumerate(lines) if i > 0 and (b"\"" in line or b"{{" in line)) + 1
    opening = b"{{" if b"{{" in lines[number - 1] and b'"' not in lines[number - 1] else b'"'
    lines[number - 1] = lines[number - 1].replace(opening, opening + b"\xff", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    column = lines[number - 1].index(b"\xff") + 1
    assert str(err.value) == (f"{path} line {number}: not UTF-8 text (byte 0xff at byte column {column}); save the "
                              "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_a_utf16_cases_file_is_named_as_such(mini_suite: Path):
    cases = mini_suite / "cases.jsonl"
    cases.write_bytes(cases.read_text().encode("utf-16"))
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == f"{cases}: UTF-16 text; save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)"


def test_a_utf8_byte_order_mark_is_accepted_and_dropped_in_every_text_file(mini_suite: Path):
    """Windows editors write one: suite.toml, cases, template and schema load as without it."""
    plain = load_suite(mini_suite)
    for name in ("suite.toml", "cases.jsonl", "prompt.j2", "schema.json"):
        path = mini_suite / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    suite = load_suite(mini_suite)
    assert [c.id for c in suite.cases] == [c.id for c in plain.cases] and suite.cases[0].line == 1
    assert suite.cases[0].messages == plain.cases[0].messages and "\ufeff" not in suite.cases[0].messages[-1]["content"]
    assert suite.response_schema == plain.response_schema and suite.spec == plain.spec


@pytest.mark.parametrize(("old", "new", "message"), [
    ("max_tokens = 200", 'max_tokens = "200"',
     'params.max_tokens: expected a whole number, got the string "200"; write max_tokens = 200, without quotes'),
    ("temperature = 0.0", 'temperature = "0.5"',
     'params.temperature: expected a number, got the string "0.5"; write temperature = 0.5, without quotes'),
    ("concurrency = 1", 'concurrency = "4"',
     'providers[2].concurrency: expected a whole number, got the string "4"; write concurrency = 4, without quotes'),
    ("concurrency = 1", 'concurrency = 1\ntimeout = "30s"',
     'providers[2].timeout: expected a number, got the string "30s"; give timeout a number'),
    ("default_limit", 'default_limit = "all"\n# default_limit',
     'cases.default_limit: expected a whole number, got the string "all"; give default_limit a whole number'),
    ("dayfirst = true", 'dayfirst = "yes"',
     'scorers[1].dayfirst: expected true or false, got the string "yes"; give dayfirst true or false'),
    ("max_tokens = 200", "max_tokens = 200.0", "params.max_tokens: expected a whole number, got the number 200.0; "
     "write max_tokens = 200"),
    ('version = "1"', "version = 2", 'version: expected a string in quotes, got the number 2; write version = "2"'),
])
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(mini_suite: Path, old: str, new: str, message: str):
    config = mini_suite / "suite.toml"
    if old == "default_limit":
        config.write_text(config.read_text().replace("[cases]\n", "[cases]\ndefault_limit = 1\n"))
        old = "default_limit = 1"
    _edit(config, old, new)
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == f"{config}: {message}"


def test_gate_limits_given_as_strings_are_refused(mini_suite: Path):
    config = mini_suite / "suite.toml"
    config.write_text(config.read_text() + '\n[gate]\nmargin = "0.05"\n')
    with pytest.raises(SuiteError, match=r"gate.margin: expected a number, got the string \"0.05\""):
        load_suite(mini_suite)


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"total": {"type": "strin"}}},
     "at properties.total.type: 'strin' is not valid under any of the given schemas"),
    ({"type": "object", "required": "total"}, "at required: 'total' is not of type 'array'"),
    ({"type": "object", "minProperties": -1}, "at minProperties: -1 is less than the minimum of 0"),
])
def test_a_schema_that_is_json_but_not_json_schema_is_refused(mini_suite: Path, schema: dict, message: str):
    path = mini_suite / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == (f"{path}: not a valid JSON Schema: {message}; fix it "
                              "(see https://json-schema.org/understanding-json-schema)")


def test_schema_drafts_inline_schemas_and_files_that_are_not_objects(mini_suite: Path):
    config, path = mini_suite / "suite.toml", mini_suite / "schema.json"
    path.write_text(json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                                "properties": {"total": {"type": "string"}}}))
    assert load_suite(mini_suite).response_schema["properties"] == {"total": {"type": "string"}}
    path.write_text(json.dumps({"$schema": "https://example.com/my-schema", "type": "object"}))
    with pytest.raises(SuiteError, match=r"schema.json: unknown \$schema 'https://example.com/my-schema'; name a"):
        load_suite(mini_suite)
    path.write_text('["total"]')
    with pytest.raises(SuiteError, match=r"schema.json: a schema file must hold a JSON object"):
        load_suite(mini_suite)
    _edit(config, 'schema_file = "schema.json"', 'schema = { type = "objet" }')
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value).startswith(f"{config}: output.schema: not a valid JSON Schema: at type: 'objet' is not")


def test_a_folder_where_a_file_is_named(mini_suite: Path):
    config = mini_suite / "suite.toml"
    (mini_suite / "data").mkdir()
    (mini_suite / "cases.jsonl").rename(mini_suite / "data" / "cases.jsonl")
    _edit(config, 'source = "cases.jsonl"', 'source = "data"')
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == (f'{config}: cases.source: {mini_suite / "data"} is a folder, not a file; name the cases '
                              'file in it, e.g. source = "data/cases.jsonl"')
    _edit(config, 'source = "data"', 'source = "data/cases.jsonl"')
    (mini_suite / "schema.json").unlink()
    (mini_suite / "schema.json").mkdir()
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == (f"{config}: output.schema_file: {mini_suite / 'schema.json'} is a folder, not a file; "
                              "name a file in it")


def test_an_unknown_provider_kind_names_the_file_and_key(mini_suite: Path):
    config = mini_suite / "suite.toml"
    _edit(config, 'id = "local:smollm2-135m"', 'id = "locl:smollm2-135m"')
    with pytest.raises(SuiteError) as err:
        load_suite(mini_suite)
    assert str(err.value) == (
        f"{config}: providers[2].id: unknown provider kind 'locl' in 'locl:smollm2-135m'; did you mean "
        "'local:smollm2-135m'? the id is 'kind:model' with kind one of local, vllm, openai-compatible, openai, "
        "anthropic, azure, log"
    )
    proc = _harness("validate", str(mini_suite))
    assert proc.returncode == 2 and proc.stderr == f"error: {err.value}\n"


def test_every_provider_kind_of_the_suite_format_plans_and_builds_a_client(tmp_path):
    """A kind the suite format accepts but the providers cannot plan or build would fail only at run time."""
    import asyncio

    from harness.providers.plan import plan_provider
    from harness.providers.registry import CLIENTS, build_provider
    from harness.suite.spec import PROVIDER_KINDS, ProviderSpec

    assert set(CLIENTS) == set(PROVIDER_KINDS)
    log = tmp_path / "calls.jsonl"
    log.write_text(json.dumps({"request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                               "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}})
                   + "\n")
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "AZURE_OPENAI_API_KEY": "k",
           "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:9/v1"}
    for kind in PROVIDER_KINDS:
        model = str(log) if kind == "log" else "m"
        spec = ProviderSpec(id=f"{kind}:{model}", role="candidate")
        plan = plan_provider(spec, env=env, base_url="http://127.0.0.1:9")
        assert plan.status == "ready", (kind, plan.reason)
        client = build_provider(plan)
        assert callable(client.complete), kind
        asyncio.run(client.aclose())
