"""Suites as data: `suite.toml` + cases (JSONL/JSON/CSV/Parquet or `hf:` datasets) + a Jinja prompt.

`load_suite(path)` validates everything up front, so that a bad suite stops before any model is
called, with a one-line `SuiteError` that names the file and the line or key, and the fix.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import re
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from pydantic import ValidationError

from harness.errors import SuiteError
from harness.suite.spec import JUDGE_KINDS, PROVIDER_KINDS, CasesSpec, ContextSpec, ScorerSpec, SuiteSpec

SUITES_DIR = Path("suites")  # where bundled suites live: `harness run invoices` means suites/invoices


@dataclass(frozen=True)
class Case:
    """One input of the workload: the fields the prompt sees, the gold answer, and where it came from."""

    id: str
    input: dict[str, Any]
    gold: Any
    line: int
    messages: list[dict[str, str]] = field(default_factory=list)
    # When a long input was cut to fit the context ([context] in suite.toml): {"field", "chars" (full length),
    # "strategy", "truncated", "kept": [[start, end], ...] (the character ranges of the full text the prompt got)}.
    context: dict[str, Any] | None = None


class _Prompt:
    """How the cases of a loaded suite become chat messages: the system prompt, then the template rendered with
    the suite's shared variables and the case's fields (the long one cut to fit, where [context] says)."""

    __slots__ = ("context", "gold_field", "messages_field", "shared", "system", "template")

    def __init__(self, template: jinja2.Template, shared: dict[str, Any], system: str | None, gold_field: str,
                 context: ContextSpec | None, messages_field: str | None = None) -> None:
        self.messages_field = messages_field
        self.template = template
        self.shared = shared
        self.system = system
        self.gold_field = gold_field
        self.context = context

    def messages(self, case: Case) -> list[dict[str, str]]:
        """The messages of `case` (jinja2.UndefinedError if the template uses a field the case lacks)."""
        if self.messages_field:
            return case.input[self.messages_field]
        shown = {**case.input, self.gold_field: case.gold}
        if self.context is not None:
            shown[self.context.field] = fit_context(shown[self.context.field], self.context)[0]
        user = self.template.render(**{**self.shared, **shown})
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": user})
        return messages


class _PromptedCase(Case):
    """A case of a loaded suite. Its `messages` are rendered from the suite's template each time they are read
    (a few microseconds), not held: a 100,000-case suite would otherwise keep 100,000 rendered prompts beside the
    inputs they are made of. `load_suite` renders each once, so a template that fails on a case stops the suite
    from loading, as before."""

    def __init__(self, id: str, input: dict[str, Any], gold: Any, line: int, context: dict[str, Any] | None,
                 prompt: _Prompt) -> None:
        for name, value in (("id", id), ("input", input), ("gold", gold), ("line", line), ("context", context),
                            ("_prompt", prompt)):
            object.__setattr__(self, name, value)

    @property
    def messages(self) -> list[dict[str, str]]:  # type: ignore[override]
        return self._prompt.messages(self)


@dataclass(frozen=True)
class Suite:
    """A loaded, validated suite: its spec, its cases (prompts rendered when read) and a content hash."""

    path: Path
    spec: SuiteSpec
    cases: list[Case]
    response_schema: dict[str, Any] | None
    hash: str
    labels: list[str] | None = None
    # judge scorers' instructions: scorer name -> the text of its `rubric` template (not in `hash`: a changed
    # rubric re-judges stored answers with `harness score`, it does not make them incomparable)
    rubrics: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def load_suite(path: str | Path) -> Suite:
    """Load and validate the suite in folder `path` (or its `suite.toml`). Raises `SuiteError`."""
    path = Path(path)
    if path.name == "suite.toml":
        path = path.parent
    config = path / "suite.toml"
    if not config.is_file():
        raise SuiteError(f"{config}: no such file; a suite is a folder with suite.toml, cases and prompt.j2")
    raw = config.read_bytes()
    try:
        data = tomllib.loads(_decode(config, raw))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{config}: not valid TOML: {exc}") from None
    spec = _validate_spec(config, data)
    _check_provider_kinds(config, spec)

    labels = _load_labels(path, spec)
    schema = _load_schema(path, spec)
    if schema is None and labels and spec.output.format == "json":
        schema = {
            "type": "object",
            "properties": {spec.output.label_key: {"type": "string", "enum": labels}},
            "required": [spec.output.label_key],
        }
    template_path = path / spec.prompt.template
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    if spec.prompt.messages_field:  # each case carries its messages: no template is read
        template_text, variables = "", {spec.prompt.messages_field}
    else:
        template_text = read_suite_file(template_path, config, "prompt.template")
    try:
        template = env.from_string(template_text)
        if not spec.prompt.messages_field:
            variables = jinja2.meta.find_undeclared_variables(env.parse(template_text))
    except jinja2.TemplateSyntaxError as exc:
        raise SuiteError(f"{template_path} line {exc.lineno}: template syntax error: {exc.message}") from None

    rubrics = _load_rubrics(path, spec, env, config)
    rows, place, numbers, cases_hash = _read_rows(path, spec.cases)
    shared = {**spec.prompt.vars, **({"labels": labels} if labels else {})}
    _check_scorer_data(spec, rows, place, numbers, config)
    per_case = sorted(set(variables) - set(shared))
    cases = _build_cases(rows, place, numbers, spec, template, template_path, per_case, shared)

    digest = hashlib.sha256()
    parts = (raw, template_text.encode(), json.dumps([schema, labels], sort_keys=True).encode(), cases_hash.encode())
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return Suite(
        path=path, spec=spec, cases=cases, response_schema=schema, hash=digest.hexdigest()[:16], labels=labels,
        rubrics=rubrics,
    )


def _load_rubrics(path: Path, spec: SuiteSpec, env: jinja2.Environment, config: Path) -> dict[str, str]:
    """Each judge scorer's rubric template, read and syntax-checked (scorer name -> text)."""
    out = {}
    for index, scorer in enumerate(spec.scorers):
        if scorer.kind not in JUDGE_KINDS or not scorer.rubric:
            continue
        file = path / scorer.rubric
        text = read_suite_file(file, config, f"scorers[{index}].rubric")
        try:
            env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise SuiteError(f"{file} line {exc.lineno}: template syntax error: {exc.message}") from None
        out[scorer.name or scorer.kind] = text
    return out


JUDGE_LABEL_FIELD = "judge_labels"
PAIRWISE_LABELS = ("a", "b", "tie")


def check_judge_labels(labels: Any, where: str, spec: SuiteSpec) -> None:
    """SuiteError unless a case's `judge_labels` is a list of labelled examples the suite's judges can be checked
    on: `{"kind": "pairwise", "a": TEXT, "b": TEXT, "label": "a" | "b" | "tie"}` or `{"kind": "rubric", "answer":
    TEXT, "label": SCORE}` with a whole-number score on the rubric scorer's scale."""
    fix = ('e.g. [{"kind": "pairwise", "a": "...", "b": "...", "label": "a"}, '
           '{"kind": "rubric", "answer": "...", "label": 4}]')
    if not isinstance(labels, list):
        raise SuiteError(f"{where}: '{JUDGE_LABEL_FIELD}' must be a list of labelled examples, {fix}")
    scales = [s.scale for s in spec.scorers if s.kind == "rubric"]
    for number, item in enumerate(labels):
        at = f"{where}: {JUDGE_LABEL_FIELD}[{number}]"
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "pairwise":
            if not isinstance(item.get("a"), str) or not isinstance(item.get("b"), str):
                raise SuiteError(f"{at}: a pairwise example needs the two answers as text in 'a' and 'b'")
            if item.get("label") not in PAIRWISE_LABELS:
                raise SuiteError(f"{at}: label must be \"a\", \"b\" or \"tie\" (the better answer), "
                                 f"not {item.get('label')!r}")
        elif kind == "rubric":
            if not isinstance(item.get("answer"), str):
                raise SuiteError(f"{at}: a rubric example needs the answer as text in 'answer'")
            score, top = item.get("label"), max(scales, default=10)
            if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= top:
                raise SuiteError(f"{at}: label must be a whole score from 1 to {top}, not {score!r}")
        else:
            raise SuiteError(f"{at}: kind must be \"pairwise\" or \"rubric\", {fix}")


def _load_labels(path: Path, spec: SuiteSpec) -> list[str] | None:
    """The label set of a classification suite: `output.labels` or the JSON list in `output.labels_file`."""
    out, config = spec.output, path / "suite.toml"
    if out.labels is not None and out.labels_file:
        raise SuiteError(f"{config}: output: give either 'labels' or 'labels_file', not both")
    labels = out.labels
    if out.labels_file:
        file = path / out.labels_file
        try:
            labels = json.loads(read_suite_file(file, config, "output.labels_file"))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{file} line {exc.lineno}: not valid JSON: {exc.msg}") from None
        if isinstance(labels, dict) and isinstance(labels.get("labels"), list):
            labels = labels["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise SuiteError(f"{file}: a labels file must hold a JSON list of strings")
    if labels is not None:
        if len(labels) < 2:
            raise SuiteError(f"{config}: output.labels: name at least two labels")
        if len(set(labels)) != len(labels):
            dup = next(x for x in labels if labels.count(x) > 1)
            raise SuiteError(f"{config}: output.labels: '{dup}' appears twice")
    if any(s.kind == "label" for s in spec.scorers) and not labels:
        raise SuiteError(f"{config}: a 'label' scorer needs the label set: output.labels or output.labels_file")
    return labels


DEFAULT_CLAUSE_CATEGORIES = [
    "Parties", "Agreement Date", "Governing Law", "Expiration Date", "Renewal Term", "Anti-Assignment",
    "Termination For Convenience", "Exclusivity", "Non-Compete", "Cap On Liability", "Uncapped Liability",
    "Change Of Control",
]


def clause_categories(spec: SuiteSpec, scorer: ScorerSpec) -> list[str]:
    """The clause types a `clauses` scorer scores: its own list, else `prompt.vars.categories`, else a dozen."""
    asked = spec.prompt.vars.get("categories")
    return list(scorer.categories or (asked if isinstance(asked, (list, dict)) else DEFAULT_CLAUSE_CATEGORIES))


def _check_scorer_data(
    spec: SuiteSpec, rows: list[dict[str, Any]], place: str, numbers: list[int], config: Path
) -> None:
    """The case fields and gold keys that `clauses` and `line_items` scorers name must be there: a misspelt
    one would otherwise score every case wrong (or right) without a word."""
    gold_field = spec.cases.gold_field
    for index, scorer in enumerate(spec.scorers, start=1):
        if scorer.kind == "clauses":
            seen: set[str] = set()
            for row, number in zip(rows, numbers, strict=True):
                if not isinstance(row.get(scorer.text_field), str):
                    raise SuiteError(f"{place} {number}: no text field '{scorer.text_field}', which "
                                     f"scorers[{index}].text_field names (the contract the quotes are checked in)")
                gold = row.get(gold_field)
                if not isinstance(gold, dict):
                    raise SuiteError(f"{place} {number}: gold '{gold_field}' must be an object keyed by clause type")
                seen.update(_fold_key(key) for key in gold)
            for category in clause_categories(spec, scorer):
                if _fold_key(category) not in seen:
                    raise SuiteError(f"{config}: scorers[{index}].categories: no case's gold has '{category}'; "
                                     "check its spelling against the gold's clause types")
        elif scorer.kind == "line_items":
            for row, number in zip(rows, numbers, strict=True):
                gold = row.get(gold_field)
                if not isinstance(gold, dict) or scorer.key not in gold:
                    raise SuiteError(f"{place} {number}: gold has no '{scorer.key}', which scorers[{index}].key "
                                     "names; add it ([] for none)")


def _fold_key(key: str) -> str:
    return "".join(ch for ch in key.casefold() if ch.isalnum())


def fit_context(text: str, spec: ContextSpec) -> tuple[str, dict[str, Any]]:
    """Cut `text` to `spec.max_chars` by the spec's strategy. Returns the text the prompt gets (with a marker
    where text was left out, so the model knows) and the record stored with the case."""
    n = len(text)
    record: dict[str, Any] = {"field": spec.field, "chars": n, "strategy": spec.strategy, "truncated": False,
                              "kept": [[0, n]]}
    if n <= spec.max_chars:
        return text, record
    if spec.strategy == "head":
        kept = text[: spec.max_chars]
        record.update(truncated=True, kept=[[0, spec.max_chars]])
        return kept + f"\n[... {n - spec.max_chars} more characters not shown ...]", record
    head = spec.max_chars * 2 // 3
    tail = spec.max_chars - head
    record.update(truncated=True, kept=[[0, head], [n - tail, n]])
    return text[:head] + f"\n[... {n - head - tail} characters not shown ...]\n" + text[n - tail:], record


def _validate_spec(config: Path, data: dict[str, Any]) -> SuiteSpec:
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(validation_message(config, exc, data)) from None


def validation_message(config: Path | str, exc: ValidationError, data: dict[str, Any]) -> str:
    """One line for the first problem pydantic found in TOML file `config`, naming the key and the fix."""
    err = exc.errors()[0]
    where = _toml_path(err["loc"], data)
    if err["type"] == "extra_forbidden":
        return f"{config}: unknown key '{where}'; remove it or check its spelling"
    if err["type"] == "missing":
        return f"{config}: missing key '{where}'"
    if err["type"] in _EXPECTED:
        return f"{config}: {where}: {_type_problem(err['type'], err['loc'], err['input'])}"
    return f"{config}: {where}: {err['msg'].removeprefix('Value error, ')}"


# pydantic's error type for a value of the wrong TOML type -> what the key takes
_EXPECTED = {
    "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
    "string_type": "a string in quotes", "list_type": "a list [...]", "dict_type": "a table",
    "model_type": "a table", "model_attributes_type": "a table",
}


def _type_problem(kind: str, loc: tuple[Any, ...], value: Any) -> str:
    """E.g. `expected a whole number, got the string "200"; write max_tokens = 200, without quotes`."""
    key = next((str(part) for part in reversed(loc) if isinstance(part, str)), "it")
    expected = _EXPECTED[kind]
    problem = f"expected {expected}, got {_toml_value(value)}"
    if isinstance(value, str) and _unquoted(kind, value.strip()) is not None:
        return f"{problem}; write {key} = {value.strip()}, without quotes"
    if kind == "int_type" and isinstance(value, float) and value.is_integer():
        return f"{problem}; write {key} = {int(value)}"
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return f'{problem}; write {key} = "{value}"'
    return f"{problem}; give {key} {expected}"


def _unquoted(kind: str, text: str) -> Any:
    """What `text` reads as in TOML without its quotes, if that is of the type `kind` asks for; else None."""
    if not text or any(ch.isspace() or ch == "#" for ch in text):
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    wanted = {"int_type": int, "float_type": (int, float), "bool_type": bool}.get(kind)
    if wanted is None or isinstance(value, bool) != (kind == "bool_type") or not isinstance(value, wanted):
        return None
    return value


def _toml_value(value: Any) -> str:
    """How a value read from TOML was written, for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return f"the string {shown if len(shown) <= 60 else shown[:57] + '...'}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _toml_path(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """Render a pydantic location as a TOML path, e.g. `providers[2].concurrency` (1-based)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _load_schema(path: Path, spec: SuiteSpec) -> dict[str, Any] | None:
    out, config = spec.output, path / "suite.toml"
    if out.json_schema is not None and out.schema_file:
        raise SuiteError(f"{config}: output: give either 'schema' or 'schema_file', not both")
    if out.schema_file:
        schema_path = path / out.schema_file
        try:
            schema = json.loads(read_suite_file(schema_path, config, "output.schema_file"))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{schema_path} line {exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(schema, dict):
            raise SuiteError(f"{schema_path}: a schema file must hold a JSON object, a JSON Schema such as "
                             '{"type": "object", "properties": {...}}')
        check_json_schema(schema, str(schema_path))
        return schema
    if out.format == "text" and out.json_schema is not None:
        raise SuiteError(f"{config}: output.schema needs output.format = 'json'")
    if out.json_schema is not None:
        check_json_schema(out.json_schema, f"{config}: output.schema")
    return out.json_schema


def check_json_schema(schema: dict[str, Any], where: str) -> None:
    """Raise SuiteError (starting with `where`) unless `schema` is a valid JSON Schema of the draft its `$schema`
    names (the latest draft when it names none), checked against that draft's meta-schema by `jsonschema`."""
    import jsonschema

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validator = jsonschema.validators.validator_for(schema)
    if caught:  # a $schema jsonschema does not know
        raise SuiteError(f"{where}: unknown $schema {str(schema.get('$schema'))[:100]!r}; name a JSON Schema draft, "
                         'e.g. "https://json-schema.org/draft/2020-12/schema", or leave $schema out')
    try:
        validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        at = ".".join(str(part) for part in exc.path) or "(top level)"
        message = " ".join(exc.message.split())
        message = message if len(message) <= 200 else message[:200] + "..."
        raise SuiteError(f"{where}: not a valid JSON Schema: at {at}: {message}; fix it "
                         "(see https://json-schema.org/understanding-json-schema)") from None


def _check_provider_kinds(config: Path, spec: SuiteSpec) -> None:
    """Every provider id must start with a kind the harness has (`PROVIDER_KINDS`)."""
    for index, provider in enumerate(spec.providers, start=1):
        kind, _, model = provider.id.partition(":")
        if kind not in PROVIDER_KINDS:
            close = difflib.get_close_matches(kind, PROVIDER_KINDS, n=1)
            hint = f"did you mean '{close[0]}:{model}'? " if close else ""
            raise SuiteError(f"{config}: providers[{index}].id: unknown provider kind '{kind}' in '{provider.id}'; "
                             f"{hint}the id is 'kind:model' with kind one of {', '.join(PROVIDER_KINDS)}")


def read_suite_file(file: Path, config: Path, key: str) -> str:
    """The text of a file that key `key` of suite.toml `config` names: UTF-8, a leading byte order mark dropped.
    Raises SuiteError naming the key when the file is missing or is a folder, and the line of a byte that is not
    UTF-8."""
    if file.is_dir():
        raise SuiteError(f"{config}: {key}: {file} is a folder, not a file; name a file in it")
    try:
        content = file.read_bytes()
    except FileNotFoundError:
        raise SuiteError(f"{config}: {key}: {file} does not exist") from None
    except OSError as exc:
        raise SuiteError(f"{config}: {key}: cannot read {file}: {exc.strerror or exc}") from None
    return _decode(file, content)


def _decode(file: Path, content: bytes) -> str:
    """`content` of `file` as UTF-8 text, a leading byte order mark (as some Windows editors write) dropped."""
    try:
        return content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        column = exc.start - (content.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SuiteError(_not_utf8(file, line, column, content[exc.start], content)) from None


def _not_utf8(file: Path, line: int, column: int, byte: int, content: bytes) -> str:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{file}: UTF-16 text; save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)"
    return (f"{file} line {line}: not UTF-8 text (byte 0x{byte:02x} at byte column {column}); save the file as "
            "UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def _read_rows(path: Path, cases: CasesSpec) -> tuple[list[dict[str, Any]], str, list[int], str]:
    """Read the case rows. Returns the rows, how to name a place in the source (e.g. `cases.jsonl line`),
    the number of each row's place (its physical line where the format has lines), and a hash of the source.

    JSONL, JSON and CSV are read with the standard library, so that values arrive exactly as written (the
    JSON loader of `datasets` turns ISO date strings into timestamps and `"6.00"` into 6.0) and every error
    names the physical line. Parquet files and `hf:` data sets are read through `datasets`.
    """
    if cases.source.startswith("hf:"):
        name = cases.source[3:]
        dataset = _load_dataset(name, split=cases.split, what=f"{path / 'suite.toml'}: cases.source {cases.source}")
        rows = dataset.to_list()
        return rows, f"{cases.source} row", list(range(1, len(rows) + 1)), f"{name}@{dataset._fingerprint}"

    file = path / cases.source
    if file.is_dir():
        inside = sorted(p.name for p in file.iterdir() if p.suffix.lower() in CASE_SUFFIXES and p.is_file())
        example = f"{cases.source.rstrip('/')}/{inside[0] if inside else 'cases.jsonl'}"
        raise SuiteError(f"{path / 'suite.toml'}: cases.source: {file} is a folder, not a file; name the cases file "
                         f'in it, e.g. source = "{example}"')
    if not file.is_file():
        raise SuiteError(f"{path / 'suite.toml'}: cases.source: {file} does not exist")
    suffix = file.suffix.lower()
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise SuiteError(f"{path / 'suite.toml'}: cases.source: cannot read {file}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(content).hexdigest()
    if suffix == ".jsonl":
        rows, lines = _read_jsonl(file, content)
        return rows, f"{file} line", lines, digest
    if suffix == ".json":
        try:
            rows = json.loads(_decode(file, content))
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{file} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SuiteError(f"{file}: a .json cases file must hold a list of objects; use .jsonl for one a line")
        return rows, f"{file} item", list(range(1, len(rows) + 1)), digest
    if suffix == ".csv":
        rows, lines = _read_csv(file, content)
        return rows, f"{file} line", lines, digest
    if suffix == ".parquet":
        dataset = _load_dataset("parquet", data_files=str(file), split="train", what=str(file))
        rows = dataset.to_list()
        return rows, f"{file} row", list(range(1, len(rows) + 1)), digest
    raise SuiteError(f"{file}: unsupported cases file type '{suffix}'; use {', '.join(CASE_SUFFIXES)}")


CASE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _read_jsonl(file: Path, content: bytes) -> tuple[list[dict[str, Any]], list[int]]:
    """Each non-blank line must be one JSON object in UTF-8 (a byte order mark at the start of the file is
    dropped); returns the rows and the 1-based line of each."""
    rows, lines = [], []
    for number, line in enumerate(_split_lines(content.removeprefix(codecs.BOM_UTF8)), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SuiteError(_not_utf8(file, number, exc.start + 1, line[exc.start], content)) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{file} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise SuiteError(f"{file} line {number}: each line must be a JSON object, got {type(value).__name__}")
        rows.append(value)
        lines.append(number)
    if not rows:
        raise SuiteError(f"{file}: no cases (the file is empty)")
    return rows, lines


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _split_lines(content: bytes) -> Iterator[bytes]:
    """`content.splitlines()` one line at a time: a 100 MB cases file is not copied into a list of lines."""
    for match in _LINE.finditer(content):
        yield match.group().rstrip(b"\r\n")


def _read_csv(file: Path, content: bytes) -> tuple[list[dict[str, Any]], list[int]]:
    """CSV with a header row; every value a string, an empty cell a missing value. Quoted cells may span lines."""
    text = _decode(file, content)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SuiteError(f"{file}: no cases (the file is empty)") from None
    rows, lines = [], []
    start = reader.line_num + 1
    try:
        for record in reader:
            if any(cell.strip() for cell in record):
                if len(record) != len(header):
                    raise SuiteError(f"{file} line {start}: {len(record)} cells where the header has {len(header)}")
                rows.append({k: (v if v != "" else None) for k, v in zip(header, record, strict=True)})
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise SuiteError(f"{file} line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise SuiteError(f"{file}: no cases (only a header)")
    return rows, lines


def _load_dataset(*args: Any, what: str, **kwargs: Any) -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # datasets raises many kinds; all mean the same to a user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SuiteError(f"{what}: cannot load cases: {first}") from None


def _build_cases(
    rows: list[dict[str, Any]],
    place: str,
    numbers: list[int],
    spec: SuiteSpec,
    template: jinja2.Template,
    template_path: Path,
    variables: list[str],
    shared: dict[str, Any],
) -> list[Case]:
    id_field, gold_field = spec.cases.id_field, spec.cases.gold_field
    field_names = list(dict.fromkeys(f for scorer in spec.scorers if scorer.kind == "fields" for f in scorer.fields))
    prompt = _Prompt(template, shared, spec.prompt.system, gold_field, spec.context, spec.prompt.messages_field)
    seen: dict[str, str] = {}
    cases = []
    for row, number in zip(rows, numbers, strict=True):
        where = f"{place} {number}"
        for name in (id_field, gold_field, *variables):
            # null, an empty CSV cell and a field that is not there are one thing here
            if row.get(name) is None and not (name == gold_field and spec.task == "generation"):
                used = f"; {template_path.name} uses it" if name in variables else ""
                raise SuiteError(f"{where}: missing field '{name}'{used}")
        for name in field_names:
            if not isinstance(row[gold_field], dict):
                raise SuiteError(
                    f"{where}: gold '{gold_field}' must be an object with the fields {', '.join(field_names)}"
                )
            if name not in row[gold_field]:
                raise SuiteError(
                    f"{where}: gold has no field '{name}', which scorers.fields names; add it (null or \"\" for none)"
                )
        case_id = str(row[id_field])
        if case_id in seen:
            raise SuiteError(f"{where}: duplicate id '{case_id}' (first seen at {seen[case_id]})")
        seen[case_id] = where
        if shared.get("labels") and row[gold_field] not in shared["labels"]:
            raise SuiteError(f"{where}: gold label '{row[gold_field]}' is not in the label set (output.labels)")
        context = None
        if spec.context is not None:
            long = row.get(spec.context.field)
            if not isinstance(long, str):
                raise SuiteError(f"{where}: context.field '{spec.context.field}' must be a text field of every case")
            if spec.context.strategy == "fail" and len(long) > spec.context.max_chars:
                raise SuiteError(
                    f"{where}: '{spec.context.field}' has {len(long)} characters, over context.max_chars = "
                    f"{spec.context.max_chars}; raise it or set context.strategy = \"head\" or \"head_tail\""
                )
            context = fit_context(long, spec.context)[1]
        if spec.prompt.messages_field:
            _check_messages(row[spec.prompt.messages_field], f"{where}: '{spec.prompt.messages_field}'")
        if row.get(JUDGE_LABEL_FIELD) is not None:
            check_judge_labels(row[JUDGE_LABEL_FIELD], where, spec)
        inputs = {k: v for k, v in row.items() if k != gold_field}
        case = _PromptedCase(case_id, inputs, row.get(gold_field), number, context, prompt)
        try:
            prompt.messages(case)  # rendered once now, so that a bad template stops the suite here
        except jinja2.UndefinedError as exc:
            raise SuiteError(
                f"{where}: {template_path.name}: {exc.message}; add it to the case or the template"
            ) from None
        cases.append(case)
    return cases


def _check_messages(messages: Any, where: str) -> None:
    """SuiteError unless `messages` is a non-empty list of {"role": text, "content": text} (prompt.messages_field)."""
    if not isinstance(messages, list) or not messages:
        raise SuiteError(f"{where} must be a non-empty list of chat messages, e.g. "
                         '[{"role": "user", "content": "..."}]')
    for number, message in enumerate(messages):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise SuiteError(f"{where}[{number}] must be an object with a text 'role' and a text 'content'")
