"""Named queries over a run's cases: the per-case outcome table, the per-field cells of an answer, and the
report page's case records, all computed in DuckDB from `responses` and `scores`.

Each score row's JSON detail is parsed once (`json_transform` into a struct) and read from there; a report of
100,000 cases × 3 providers reads about two million score rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

from harness.store.db import Store

# the keys of a score's detail the queries below read, parsed once per row
_DETAIL = ('{"scorer_error": "VARCHAR", "gold": "JSON", "pred": "JSON", "outcome": "VARCHAR", "grounded": "JSON", '
           '"quote": "JSON", "pred_present": "JSON", "missing": "JSON", "extra": "JSON", "tp": "VARCHAR", '
           '"n_gold": "VARCHAR", "problem": "VARCHAR", "verdict": "VARCHAR", "judge_error": "VARCHAR", '
           '"score": "VARCHAR", "consistent": "VARCHAR", "against": "VARCHAR", "measure": "VARCHAR", '
           '"value": "DOUBLE"}')


def _scores(pick: bool) -> str:
    """SQL: the run's score rows with their detail parsed (`d`), their order of writing (`seq`), whether a clause
    quote was invented (`hallucinated`); of the picked cases only (a `pick(case_id)` relation) when `pick`."""
    join = "JOIN pick USING (case_id)" if pick else ""
    return f"""
    SELECT s.case_id, s.provider, s.scorer, s.metric, s.value, coalesce(s.passed, false) AS passed, s.rowid AS seq,
      json_transform(s.detail, '{_DETAIL}') AS d,
      s.metric LIKE 'clause.%' AND json_transform(s.detail, '{_DETAIL}').grounded::VARCHAR = 'false'
        AS hallucinated
    FROM scores s {join} WHERE s.run_id = $run
    """


# How and where each score row says an answer failed: `kinds` (wrong value, invalid JSON, missed clause...) and
# `places` (the field, gold label, clause type or line-item field); NULL when the row says nothing of the kind.
_FINDINGS = """
SELECT case_id, provider, metric, passed, d,
  CASE
    WHEN metric = 'case_pass' THEN CASE
      WHEN coalesce(d.scorer_error, '') <> '' THEN ['scorer error']
      WHEN d.verdict = 'loss' THEN ['judged worse']
      WHEN d.verdict = 'unjudged' THEN ['judge gave no verdict']
      WHEN d.verdict = 'scored' AND NOT passed THEN ['low rubric score']
      WHEN d.measure IS NOT NULL AND NOT passed THEN ['far from the reference']
      WHEN d.gold IS NOT NULL AND d.pred IS NOT NULL AND NOT passed
        THEN [CASE WHEN d.pred->>'$' = '(invalid)' THEN 'invalid label' ELSE 'wrong label' END] END
    WHEN metric = 'valid_json' AND NOT passed THEN ['invalid JSON']
    WHEN metric LIKE 'field.%' AND NOT passed AND coalesce(d.outcome, '') <> 'invalid_output' THEN
      [CASE WHEN d.outcome LIKE '% values' THEN d.outcome ELSE coalesce(d.outcome, 'None') || ' value' END]
    WHEN metric LIKE 'clause.%' AND (NOT passed OR hallucinated) THEN
      [CASE WHEN hallucinated THEN 'hallucinated clause quote' WHEN d.outcome = 'fp' THEN 'clause not there'
            WHEN d.outcome = 'fn' THEN 'clause missed' ELSE coalesce(d.outcome, 'None') END]
    WHEN metric = 'items.f1' THEN list_filter(
      [CASE WHEN coalesce(json_array_length(d.missing), 0) > 0 THEN 'missing item' END,
       CASE WHEN coalesce(json_array_length(d.extra), 0) > 0 THEN 'extra item' END], lambda k: k IS NOT NULL)
    WHEN metric LIKE 'item_field.%' AND value < 1 THEN ['wrong item field']
  END AS kinds,
  CASE
    WHEN metric = 'case_pass' THEN CASE
      WHEN coalesce(d.scorer_error, '') = '' AND d.gold IS NOT NULL AND d.pred IS NOT NULL AND NOT passed
        THEN ['label: ' || (d.gold->>'$')] END
    WHEN metric LIKE 'field.%' AND NOT passed AND coalesce(d.outcome, '') <> 'invalid_output' THEN [metric[7:]]
    WHEN metric LIKE 'clause.%' AND (NOT passed OR hallucinated) THEN [metric[8:]]
    WHEN metric = 'items.f1' AND (coalesce(json_array_length(d.missing), 0) > 0
                                 OR coalesce(json_array_length(d.extra), 0) > 0) THEN ['line items']
    WHEN metric LIKE 'item_field.%' AND value < 1 THEN ['line items: ' || metric[12:]]
  END AS places
FROM sc
"""

# Per case and provider: whether every `case_pass` passed, every validity check passed, why the JSON was
# invalid, and the distinct failure kinds and places.
_JUDGED = """
SELECT case_id, provider,
  bool_and(passed) FILTER (metric = 'case_pass') AS passed,
  bool_and(passed) FILTER (metric IN ('valid_json', 'valid_label')) AS valid,
  any_value(d.problem) FILTER (metric = 'valid_json' AND NOT passed) AS problem,
  list_sort(list_distinct(flatten(list(kinds) FILTER (kinds IS NOT NULL)))) AS kinds,
  list_sort(list_distinct(flatten(list(places) FILTER (places IS NOT NULL)))) AS places
FROM findings GROUP BY case_id, provider
"""

# Each case of the run (the picked ones) with each provider that ran: its answer and the judgement of it.
_OUTCOMES = """
SELECT c.case_id, c.position, c.source_line, p.provider, p.role,
  CASE WHEN r.case_id IS NULL THEN 'no answer' WHEN r.error IS NOT NULL THEN 'error'
       WHEN j.passed THEN 'pass' ELSE 'fail' END AS status,
  r.error, r.error_kind, r.latency_ms, r.ttft_ms, r.cost_usd, coalesce(r.cached, false) AS cached,
  r.input_tokens, r.output_tokens, r.attempts, r.rate_limit_wait_ms, j.valid, j.problem,
  CASE WHEN r.case_id IS NULL THEN ['no answer']
       WHEN r.error IS NOT NULL THEN list_distinct(list_prepend(
         'error: ' || coalesce(r.error_kind, 'call failed'), coalesce(j.kinds, [])))
       ELSE coalesce(j.kinds, []) END AS kinds,
  CASE WHEN r.case_id IS NULL THEN [] ELSE coalesce(j.places, []) END AS places,
  r.text, r.case_id IS NOT NULL AS answered, c.gold, c.messages
FROM cases c {pick}
JOIN run_providers p ON p.run_id = c.run_id AND p.status = 'ready'
LEFT JOIN responses r ON r.run_id = c.run_id AND r.case_id = c.case_id AND r.provider = p.provider
LEFT JOIN judged j ON j.case_id = c.case_id AND j.provider = p.provider
WHERE c.run_id = $run
"""

# The cells of a case's per-field table: one row per case, provider and `name` a scorer judged (a field,
# `clause: TYPE`, `line items`, or `scorer NAME` for a scorer that raised): `pred` the answer's value (JSON), `ok`
# whether it is right, `outcome` how it was judged.
_CELLS = """
SELECT case_id, provider, seq, metric LIKE 'field.%' AS is_field,
  CASE WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.verdict IS NOT NULL THEN 'judge ' || scorer
       WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.measure IS NOT NULL
         THEN 'reference ' || scorer
       WHEN metric = 'case_pass' THEN 'scorer ' || scorer WHEN metric LIKE 'field.%' THEN metric[7:]
       WHEN metric LIKE 'clause.%' THEN 'clause: ' || metric[8:] ELSE 'line items' END AS name,
  CASE WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.verdict IS NOT NULL THEN to_json(
         CASE d.verdict WHEN 'scored' THEN 'score ' || d.score
                        WHEN 'unjudged' THEN 'no verdict: ' || coalesce(d.judge_error, 'the judge gave none')
                        ELSE d.verdict || CASE WHEN d.consistent = 'false' THEN ' (the two orders disagreed)'
                                               ELSE '' END || ' against the ' || coalesce(d.against, 'incumbent') END)
       WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.measure IS NOT NULL
         THEN to_json(printf('%s %.2f', d.measure, d.value))
       WHEN metric = 'case_pass' THEN to_json(d.scorer_error)
       WHEN metric LIKE 'field.%' THEN coalesce(d.pred, 'null'::JSON)
       WHEN metric LIKE 'clause.%' THEN to_json(CASE
         WHEN d.pred_present::VARCHAR = 'true' THEN CASE WHEN quote <> '' THEN quote ELSE 'present, no quote' END
         WHEN quote <> '' THEN 'absent, yet quoted: ' || quote ELSE 'absent' END)
       ELSE json_object('matched', concat(d.tp, ' of ', d.n_gold), 'missing', coalesce(d.missing, '[]'::JSON),
                        'extra', coalesce(d.extra, '[]'::JSON)) END AS pred,
  coalesce(CASE WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = ''
                     AND (d.verdict IS NOT NULL OR d.measure IS NOT NULL) THEN passed
                WHEN metric = 'case_pass' THEN false
                WHEN metric LIKE 'clause.%' THEN passed AND NOT coalesce(hallucinated, false)
                ELSE passed END, false) AS ok,
  CASE WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.verdict IS NOT NULL THEN d.verdict
       WHEN metric = 'case_pass' AND coalesce(d.scorer_error, '') = '' AND d.measure IS NOT NULL
         THEN CASE WHEN passed THEN 'close' ELSE 'far' END
       WHEN metric = 'case_pass' THEN 'scorer error' WHEN metric LIKE 'clause.%' AND hallucinated
       THEN 'hallucinated quote' WHEN metric = 'items.f1' THEN coalesce(d.problem, printf('F1 %.2f', value))
       ELSE d.outcome END AS outcome
FROM (SELECT *, coalesce(CASE WHEN json_type(d.quote) = 'ARRAY' THEN array_to_string(CAST(d.quote AS VARCHAR[]),
                                                                                     ' | ')
                              ELSE d.quote->>'$' END, '') AS quote FROM sc)
WHERE (metric = 'case_pass' AND coalesce(d.scorer_error, '') <> '')
   OR (metric = 'case_pass' AND (d.verdict IS NOT NULL AND d.verdict <> 'baseline' OR d.measure IS NOT NULL))
   OR metric LIKE 'field.%' OR metric LIKE 'clause.%' OR metric = 'items.f1'
"""

OUTCOME_COLUMNS = ("case_id", "position", "source_line", "provider", "role", "status", "error", "error_kind",
                   "latency_ms", "ttft_ms", "cost_usd", "cached", "input_tokens", "output_tokens", "attempts",
                   "rate_limit_wait_ms", "valid", "problem", "kinds", "places")


def case_outcomes(store: Store, run_id: str, *, texts: bool = False) -> pd.DataFrame:
    """The per-case outcome table of `run_id`: one row per case and provider that ran, in case order (columns
    `OUTCOME_COLUMNS`, plus the answer's `text` with `texts`). `status` is `pass` (answered, and every scorer's
    `case_pass` passed), `fail`, `error` (the call failed) or `no answer` (nothing stored); `kinds` and `places`
    list how and where the answer failed; `valid`: whether every validity check passed (NA when none ran)."""
    columns = ", ".join([*OUTCOME_COLUMNS, *(["text"] if texts else [])])
    sql = (f"WITH sc AS ({_scores(pick=False)}), findings AS ({_FINDINGS}), judged AS ({_JUDGED}) "
           f"SELECT {columns} FROM ({_OUTCOMES.format(pick='')}) ORDER BY position, role DESC, provider")
    return store.query(sql, {"run": run_id})


def case_fields(store: Store, run_id: str, case_ids: list[str] | None = None) -> pd.DataFrame:
    """The per-field cells of `run_id`'s answers (of `case_ids` only, when given): case_id, provider, name (a
    field, `clause: TYPE`, `line items` or `scorer NAME` for a scorer that raised), pred (the answer's value as
    JSON text), ok and outcome; fields first, in the order the scorers wrote them."""
    params: dict[str, Any] = {"run": run_id}
    pick = ""
    if case_ids is not None:
        pick, params["cases"] = "pick AS (SELECT unnest($cases::VARCHAR[]) AS case_id), ", case_ids
    sql = (f"WITH {pick}sc AS ({_scores(pick=case_ids is not None)}) SELECT case_id, provider, name, "
           f"pred::VARCHAR AS pred, ok, outcome FROM ({_CELLS}) ORDER BY NOT is_field, seq")
    return store.query(sql, params)


def cell_names(store: Store, run_id: str) -> list[str]:
    """The names of `run_id`'s per-field cells (`case_fields`), fields first, in the order the scorers wrote
    them."""
    sql = (f"WITH sc AS ({_scores(pick=False)}) SELECT name FROM ({_CELLS}) GROUP BY name "
           "ORDER BY bool_or(NOT is_field), min(seq)")
    return [name for (name,) in store.con.execute(sql, {"run": run_id}).fetchall()]


def _cut(expr: str, limit: int) -> str:
    """SQL: the text `expr` cut to `limit` characters, saying how many more there were."""
    return (f"CASE WHEN length({expr}) <= {limit} THEN {expr} ELSE left({expr}, {limit}) || ' … [' || "
            f"format('{{:,}}', length({expr}) - {limit}) || ' more characters]' END")


def _cut_json(expr: str, limit: int) -> str:
    """SQL: a JSON value to show: itself when its text is within `limit` characters, else its text cut (as a JSON
    string); a JSON string is cut as text."""
    text = f"({expr}->>'$')"
    return (f"CASE WHEN {expr} IS NULL THEN NULL WHEN json_type({expr}) = 'VARCHAR' THEN to_json({_cut(text, limit)})"
            f" WHEN length({expr}::VARCHAR) <= {limit} THEN {expr} ELSE to_json({_cut(f'({expr}::VARCHAR)', limit)})"
            " END")


def _object(key: str, value: str, where: str | None = None) -> str:
    """SQL: an aggregate JSON object of `key`: `value` over a case's providers (those matching `where`); {} when
    none matches. Its keys are in no particular order: the page reads them by name, in its own provider order."""
    only = f" FILTER ({where})" if where else ""
    return (f"coalesce(to_json(map_from_entries(list(struct_pack(k := {key}, v := {value})){only})), "
            "'{}'::JSON)")


def _gold_cell() -> str:
    """SQL: what a failed case's field table shows as gold for row `name` (a field, a clause type, the line
    items), from the case's `gold`."""
    clause = "'$.\"' || name[9:] || '\"'"
    return f"""CASE
      WHEN name LIKE 'clause: %' THEN CASE
        WHEN coalesce(gold->>({clause} || '.present'), 'false') = 'false' THEN to_json('absent')
        ELSE to_json(concat('present',
          CASE WHEN coalesce(gold->>({clause} || '.answer'), '') NOT IN ('', 'Yes', 'No')
               THEN ' (' || (gold->>({clause} || '.answer')) || ')' END,
          ': ' || left(gold->>({clause} || '.spans[0].text'), 600))) END
      WHEN name = 'line items' THEN gold->('$."' || $items || '"')
      WHEN name LIKE 'scorer %' THEN NULL
      ELSE gold->('$."' || name || '"') END"""


def page_records(store: Store, run_id: str, case_ids: list[str], *, order: list[str], incumbent: str | None,
                 names: list[str], items_key: str, limits: dict[str, int]) -> Iterator[str]:
    """The cases `case_ids` of `run_id` as the report page's script reads them, one JSON object a case, in the
    order given: id, position, line, `st` (status per provider), `cat` (each candidate's paired outcome against
    the incumbent), `k` and `w` (failure kinds and places of the providers that did not pass), `o` (outputs),
    `e` (errors), `lat` (latencies), `in` (the prompt), `gold` and, for a case some provider failed, `rows` (the
    field table: name, gold, and per provider [pred, ok, outcome]). `order`: the providers shown, incumbent
    first; `names`: the rows of a field table; `limits`: characters kept of outputs and gold (`text`,
    `passing_text`), prompts (`input`, `passing_input`) and table cells (`cell`)."""
    text, short, cell = limits["text"], limits["passing_text"], limits["cell"]
    prompt = "json_extract_string(messages, '$[#-1].content')"
    sql = f"""
    WITH pick AS (SELECT unnest($cases::VARCHAR[]) AS case_id, generate_subscripts($cases::VARCHAR[], 1) AS rank),
    sc AS ({_scores(pick=True)}),
    findings AS ({_FINDINGS}),
    judged AS ({_JUDGED}),
    o AS (SELECT *, list_position($order, provider) AS k FROM ({_OUTCOMES.format(pick='JOIN pick USING (case_id)')})
          WHERE list_contains($order, provider)),
    per_case AS (
      SELECT case_id, bool_or(status <> 'pass') AS failing, any_value(status) FILTER (provider = $incumbent) AS base,
        any_value(gold)::JSON AS gold
      FROM o GROUP BY case_id
    ),
    categories AS (
      SELECT case_id, {_object('provider', '''CASE WHEN base = 'pass' AND status <> 'pass' THEN 'regression'
          WHEN base <> 'pass' AND status = 'pass' THEN 'win' WHEN status = 'pass' THEN 'both_pass'
          ELSE 'both_fail' END''')} AS cat
      FROM o JOIN per_case USING (case_id) WHERE $incumbent IS NOT NULL AND provider <> $incumbent GROUP BY case_id
    ),
    cells AS (SELECT * FROM ({_CELLS}) WHERE list_contains($names, name)),
    grid AS (
      SELECT pc.case_id, n.name, n.i, o.k, pc.gold,
        json_array({_cut_json('c.pred', cell)}, coalesce(c.ok, false),
                   coalesce(c.outcome, CASE WHEN o.answered THEN 'error' ELSE 'no answer' END)) AS cell
      FROM per_case pc
      CROSS JOIN (SELECT unnest($names::VARCHAR[]) AS name, generate_subscripts($names::VARCHAR[], 1) AS i) n
      JOIN o ON o.case_id = pc.case_id
      LEFT JOIN cells c ON c.case_id = pc.case_id AND c.provider = o.provider AND c.name = n.name
      WHERE pc.failing
    ),
    table_rows AS (
      SELECT case_id, to_json(list(json_array(name, coalesce({_cut_json('gold_cell', cell)}, to_json('')), cells)
                                   ORDER BY i)) AS rows
      FROM (SELECT case_id, name, i, to_json(list(cell ORDER BY k)) AS cells, {_gold_cell()} AS gold_cell
            FROM grid GROUP BY case_id, name, i, gold)
      GROUP BY case_id
    )
    SELECT json_object(
      'id', case_id, 'pos', position, 'line', source_line, 'cat', cat, 'st', st, 'k', k, 'w', w, 'o', o, 'e', e,
      'lat', lat,
      'in', CASE WHEN failing THEN {_cut(prompt, limits['input'])} ELSE {_cut(prompt, limits['passing_input'])} END,
      'gold', CASE WHEN failing THEN {_cut_json('gold', text)} ELSE {_cut_json('gold', short)} END,
      'rows', rows
    )::VARCHAR AS record
    FROM (
      SELECT case_id, any_value(rank) AS rank, any_value(position) AS position, any_value(source_line) AS source_line,
        any_value(cat) AS cat, any_value(failing) AS failing, any_value(per_case.gold) AS gold,
        any_value(messages) AS messages, any_value(rows) AS rows,
        {_object('provider', 'status')} AS st,
        {_object('provider', 'kinds', "status <> 'pass'")} AS k,
        {_object('provider', 'places', "status <> 'pass' AND answered")} AS w,
        {_object('provider', f"CASE WHEN failing THEN {_cut('text', text)} ELSE {_cut('text', short)} END")} AS o,
        {_object('provider', 'error', 'error IS NOT NULL')} AS e,
        {_object('provider', 'latency_ms', 'latency_ms IS NOT NULL')} AS lat
      FROM o JOIN per_case USING (case_id) JOIN pick USING (case_id) LEFT JOIN categories USING (case_id)
      LEFT JOIN table_rows USING (case_id)
      GROUP BY case_id
    )
    ORDER BY rank
    """
    params = {"run": run_id, "cases": case_ids, "order": order, "incumbent": incumbent, "names": names,
              "items": items_key}
    cursor = store.con.execute(sql, params)
    while rows := cursor.fetchmany(2048):
        for (record,) in rows:
            yield record
