"""The HTML report in a real browser: Debian's Chromium driven by playwright, the page opened from disk (no
server), as a reader opens it.

Two real runs of the harness against the local OpenAI wire-format server, incumbent and candidate both:
- 120 invoices with regressions, wins, cases both fail and both pass, an HTTP 500 and an invalid JSON answer:
  every number of the summary and paired tables against SQL on the DuckDB file, then the filters, the paired
  links, the text search and the pages;
- 60 invoices whose outputs, gold values, inputs, error messages and case ids carry script payloads: every page
  under every filter value, every <details> opened and every link clicked, and nothing runs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conftest import copy_invoices
from openai_server import OpenAIServer, Reply

from harness.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright is not installed (pip install -e '.[dev]')"),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium)"),
]

INCUMBENT = "openai:gpt-4o-mini"
INCUMBENT_MODEL = "gpt-4o-mini"  # what the incumbent sends as `model`; the local candidate sends the server's
CANDIDATE = "local:smollm2-135m"
PAIRED = ("regression", "win", "both_fail", "both_pass")
PAGE_SIZE = 50

# The 120-case run, by case index mod 10: (incumbent right, candidate right).
PLAN = {0: (True, True), 1: (True, False), 2: (True, False), 3: (True, False), 4: (False, True),
        5: (False, False), 6: (False, False), 7: (True, False), 8: (False, True), 9: (False, False)}
HTTP_500_CASE, INVALID_JSON_CASE = 13, 21  # the candidate's two broken answers (both are regressions)

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=2">',
    '<svg onload="window.__xss=3">',
    '"><iframe src="javascript:window.__xss=4">',
    "[click](javascript:window.__xss=5)",
]
ALL_PAYLOADS = " ".join(PAYLOADS)
PAYLOAD_IDS = ['x"><img src=x onerror="window.__xss=6">', "</script><script>window.__xss=7</script>"]

# Everything attached to the DOM that could run script: on* attributes, javascript: URLs, frames, images, and
# scripts or SVG beyond the report's own.
DOM_SCAN = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) {
      const name = attr.name.toLowerCase();
      const value = attr.value.replace(/[\\u0000-\\u0020]/g, '').toLowerCase();
      if (name.startsWith('on')) { bad.push(el.tagName + '[' + name + ']'); }
      if (['href', 'src', 'xlink:href', 'action', 'formaction', 'data', 'srcdoc'].includes(name)
          && (value.startsWith('javascript:') || name === 'srcdoc')) { bad.push(el.tagName + '[' + name + ']'); }
    }
  }
  return {
    bad: bad,
    frames: document.querySelectorAll('iframe, frame, object, embed, img').length,
    scripts: Array.from(document.querySelectorAll('script')).map(s => s.id || 'inline'),
    stray_svg: Array.from(document.querySelectorAll('svg')).filter(s => !s.closest('figure.chart')).length,
  };
}"""


@dataclass
class Run:
    """A finished run: its DuckDB file and report, the suite's cases, and the truth computed by SQL."""

    db: Path
    report: Path
    run_id: str
    rows: list[dict]
    tmp: Path
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]


@dataclass
class Opened:
    """A report open in a page, with what the page reported: console errors, page errors and dialogs."""

    page: Any
    errors: list[str]
    dialogs: list[str]


# ---------------------------------------------------------------------------------------------------------------
# the runs


def _suite(tmp: Path, n_cases: int) -> Path:
    suite = copy_invoices(tmp, n_cases)
    config = suite / "suite.toml"
    text = config.read_text()
    line = f'id = "{CANDIDATE}"\n'
    assert text.count(line) == 1
    # one attempt per call: the HTTP 500 fails at once rather than after seconds of backoff
    config.write_text(text.replace(line, line + "max_attempts = 1\n"))
    return suite


def _rows(suite: Path) -> list[dict]:
    return [json.loads(line) for line in (suite / "cases.jsonl").read_text().splitlines() if line.strip()]


def _write_rows(suite: Path, rows: list[dict]) -> None:
    (suite / "cases.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def _case_index(rows: list[dict]) -> Callable[[dict], int]:
    texts = [row["text"] for row in rows]
    return lambda body: next(i for i, text in enumerate(texts) if text in body["messages"][-1]["content"])


def _harness_run(suite: Path, out: Path, responder: Callable[[dict], Reply]) -> Run:
    """`harness run` with the incumbent and the candidate both answered by one local server."""
    db, reports = out / "shadow.duckdb", out / "reports"
    with OpenAIServer(responder) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "test-key")
        env.setenv("OPENAI_BASE_URL", server.base_url)
        code = main(["run", str(suite), "--db", str(db), "--reports", str(reports), "--base-url", server.base_url,
                     "--no-progress"])
        models = {body["model"] for body in server.requests}
    assert code == 0
    assert models == {INCUMBENT_MODEL, server.model}
    (run_id,) = _sql(db, "SELECT run_id FROM runs")[0]
    (report,) = reports.rglob("index.html")
    return Run(db=db, report=report, run_id=run_id, rows=_rows(suite), tmp=out)


def _sql(db: Path, query: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()


# a case passes for a provider when every case_pass row of it passed; no row (a failed call) is a failure
STATUS_SQL = """
WITH providers AS (SELECT provider, role FROM run_providers WHERE run_id = $run AND status = 'ready'),
passes AS (
    SELECT case_id, provider, bool_and(coalesce(passed, false)) AS ok
    FROM scores WHERE run_id = $run AND metric = 'case_pass' GROUP BY ALL
)
SELECT c.case_id, p.provider, p.role, coalesce(s.ok, false) AS ok
FROM cases c CROSS JOIN providers p LEFT JOIN passes s ON s.case_id = c.case_id AND s.provider = p.provider
WHERE c.run_id = $run
"""

SUMMARY_SQL = f"""
WITH status AS ({STATUS_SQL}),
passed AS (SELECT provider, count(*) FILTER (WHERE ok) AS passed, count(*) AS cases FROM status GROUP BY ALL),
answers AS (
    SELECT provider,
        count(*) FILTER (WHERE error IS NULL) AS answered,
        count(*) FILTER (WHERE error IS NOT NULL) AS errors,
        quantile_cont(latency_ms, 0.5) FILTER (WHERE error IS NULL AND NOT coalesce(cached, false)) AS p50,
        quantile_cont(latency_ms, 0.95) FILTER (WHERE error IS NULL AND NOT coalesce(cached, false)) AS p95
    FROM responses WHERE run_id = $run GROUP BY ALL
),
validity AS (
    SELECT provider, case_id, bool_and(coalesce(passed, false)) AS valid
    FROM scores WHERE run_id = $run AND metric IN ('valid_json', 'valid_label') GROUP BY ALL
),
invalid AS (SELECT provider, avg(CASE WHEN valid THEN 0 ELSE 1 END) AS invalid_rate FROM validity GROUP BY ALL)
SELECT provider, passed, passed / cases AS pass_rate, answered, errors, invalid_rate, p50, p95
FROM passed LEFT JOIN answers USING (provider) LEFT JOIN invalid USING (provider)
"""

PAIRED_SQL = f"""
WITH status AS ({STATUS_SQL})
SELECT cand.provider, cand.case_id,
    CASE WHEN inc.ok AND NOT cand.ok THEN 'regression' WHEN cand.ok AND NOT inc.ok THEN 'win'
         WHEN cand.ok THEN 'both_pass' ELSE 'both_fail' END AS category
FROM status cand JOIN status inc ON inc.case_id = cand.case_id AND inc.role = 'incumbent'
WHERE cand.role = 'candidate'
"""


def _truth(run: Run) -> dict[str, Any]:
    """What the report must say, straight from DuckDB."""
    params = {"run": run.run_id}
    con = duckdb.connect(str(run.db), read_only=True)
    try:
        summary = {
            row[0]: dict(zip(("passed", "pass_rate", "answered", "errors", "invalid_rate", "latency_p50_ms",
                              "latency_p95_ms"), row[1:], strict=True))
            for row in con.execute(SUMMARY_SQL, params).fetchall()
        }
        paired: dict[str, dict[str, set[str]]] = {}
        for candidate, case_id, category in con.execute(PAIRED_SQL, params).fetchall():
            paired.setdefault(candidate, {name: set() for name in PAIRED})[category].add(case_id)
        failing = {r[0] for r in con.execute(
            f"SELECT case_id FROM ({STATUS_SQL}) GROUP BY case_id HAVING NOT bool_and(ok)", params).fetchall()}
        incumbent_fails = {r[0] for r in con.execute(
            f"SELECT case_id FROM ({STATUS_SQL}) WHERE role = 'incumbent' AND NOT ok", params).fetchall()}
        wrong_total = {r[0] for r in con.execute(
            "SELECT DISTINCT case_id FROM scores WHERE run_id = $run AND metric = 'field.total' AND NOT passed "
            "AND json_extract_string(detail, '$.outcome') <> 'invalid_output'", params).fetchall()}
        http_500 = {r[0] for r in con.execute(
            "SELECT case_id FROM responses WHERE run_id = $run AND error_kind = 'http_500'", params).fetchall()}
        invalid_json = {r[0] for r in con.execute(
            "SELECT case_id FROM scores WHERE run_id = $run AND metric = 'valid_json' AND NOT passed",
            params).fetchall()}
    finally:
        con.close()
    return {"summary": summary, "paired": paired, "failing": failing, "incumbent_fails": incumbent_fails,
            "wrong_total": wrong_total, "http_500": http_500, "invalid_json": invalid_json}


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory) -> Run:
    """120 invoices: regressions, wins, both fail, both pass; the candidate's case 13 an HTTP 500, case 21 no JSON."""
    tmp = tmp_path_factory.mktemp("e2e")
    suite = _suite(tmp, 120)
    rows = _rows(suite)
    index = _case_index(rows)

    def responder(body: dict) -> Reply:
        i = index(body)
        incumbent = body["model"] == INCUMBENT_MODEL
        if not incumbent and i == HTTP_500_CASE:
            return Reply(status=500, error_message="upstream overloaded")
        if not incumbent and i == INVALID_JSON_CASE:
            return Reply(text="Sorry, I cannot read this receipt.")
        answer = dict(rows[i]["gold"])
        incumbent_ok, candidate_ok = PLAN[i % 10]
        if incumbent and not incumbent_ok:
            answer["company"] = "NOT THE SHOP AT ALL"
        elif not incumbent and not candidate_ok:
            answer["address" if i % 10 == 9 else "total"] = "NOWHERE" if i % 10 == 9 else "-1.23"
        return Reply(text=json.dumps(answer), chunks=3)

    run = _harness_run(suite, tmp, responder)
    run.truth = _truth(run)
    return run


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory) -> Run:
    """60 invoices whose candidate outputs, gold values, inputs, error messages and case ids carry payloads."""
    tmp = tmp_path_factory.mktemp("xss")
    suite = _suite(tmp, 60)
    rows = _rows(suite)
    for i, row in enumerate(rows):
        row["text"] += "\nNOTE " + PAYLOADS[i % len(PAYLOADS)]
    rows[0]["gold"]["company"] = "ACME " + ALL_PAYLOADS
    rows[0]["text"] += "\n" + ALL_PAYLOADS
    rows[1]["id"], rows[2]["id"] = PAYLOAD_IDS
    rows[5]["text"] += "\n" + "https://example.com/" + "y" * 3000
    _write_rows(suite, rows)
    index = _case_index(rows)

    def responder(body: dict) -> Reply:
        i = index(body)
        answer = dict(rows[i]["gold"])
        if body["model"] == INCUMBENT_MODEL:
            return Reply(text=json.dumps(answer))
        if i == 3:
            return Reply(text=ALL_PAYLOADS)  # no JSON at all
        if i == 4:
            return Reply(status=500, error_message=ALL_PAYLOADS)
        if i == 5:  # one long unbroken value
            answer["address"] = "X" * 4000
        answer["company"] = PAYLOADS[i % len(PAYLOADS)]
        answer["total"] = ALL_PAYLOADS
        return Reply(text=json.dumps(answer))

    return _harness_run(suite, tmp, responder)


# ---------------------------------------------------------------------------------------------------------------
# the browser


@pytest.fixture(scope="module")
def judged_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a generation suite judged pairwise by a scripted judge (tests/test_judges.py), one candidate answer
    carrying a script payload: its report."""
    from test_judges import responder, write_suite

    tmp = tmp_path_factory.mktemp("judged")
    suite = write_suite(tmp)

    def with_payload(body: dict) -> Reply:
        reply = responder(body)
        if body["model"] != "judge-model" and "worse reply 2" in reply.text:
            reply.text += " " + PAYLOADS[0]
        return reply

    with OpenAIServer(with_payload) as server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-test-secret")
        env.setenv("OPENAI_BASE_URL", server.base_url)
        env.delenv("ANTHROPIC_API_KEY", raising=False)
        assert main(["run", str(suite), "--db", str(tmp / "s.duckdb"), "--reports", str(tmp / "r"),
                     "--base-url", server.base_url, "--no-progress"]) == 0
    return next((tmp / "r").rglob("index.html"))


@pytest.fixture(scope="module")
def chromium(e2e_run: Run, xss_run: Run, judged_report: Path) -> Iterator[Any]:
    """One Chromium for the module. It asks for the runs first: `harness run` calls asyncio.run(), which cannot
    run while playwright's sync API holds its event loop."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _open(browser: Any, report: Path, javascript: bool = True) -> Opened:
    context = browser.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    opened = Opened(page=page, errors=[], dialogs=[])

    def on_dialog(dialog: Any) -> None:
        opened.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda msg: opened.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: opened.errors.append(str(exc)))
    page.goto(report.as_uri())
    if javascript:
        page.wait_for_selector("body[data-cases-loaded]", state="attached", timeout=10_000)
    return opened


@pytest.fixture(scope="module")
def e2e(chromium: Any, e2e_run: Run) -> Iterator[Opened]:
    opened = _open(chromium, e2e_run.report)
    yield opened
    opened.page.context.close()


@pytest.fixture
def open_report(chromium: Any) -> Iterator[Callable[..., Opened]]:
    """`open_report(path, javascript=True)`: a report in a page of its own, closed after the test."""
    contexts = []

    def opener(report: Path, javascript: bool = True) -> Opened:
        opened = _open(chromium, report, javascript)
        contexts.append(opened.page.context)
        return opened

    yield opener
    for context in contexts:
        context.close()


def _set_filters(page: Any, outcome: str = "failing", provider: str = "", where: str = "", kind: str = "",
                 text: str = "") -> None:
    """Set the filters as a reader does (typing, choosing); the outcome last, always, which goes to page 1."""
    now = page.evaluate("ids => ids.map(id => document.getElementById(id).value)",
                        ["f-text", "f-where", "f-kind", "f-provider"])
    if now[0] != text:
        page.fill("#f-text", text)
    for (select, value), current in zip((("#f-where", where), ("#f-kind", kind), ("#f-provider", provider)),
                                        now[1:], strict=True):
        if current != value:
            page.select_option(select, value)
    page.select_option("#f-outcome", outcome)


def _shown(page: Any) -> list[str]:
    return page.eval_on_selector_all("#cases div.case[data-case-id]", "els => els.map(e => e.dataset.caseId)")


def _pages(page: Any) -> Iterator[int]:
    """Go through every page of the current matches from the first (the filters put the page back to it)."""
    number = 1
    yield number
    while not page.is_disabled("#page-next"):
        page.click("#page-next")
        number += 1
        assert number <= 50, "the next button never turns off"
        yield number


def _all_shown(page: Any) -> list[str]:
    ids = [case_id for _ in _pages(page) for case_id in _shown(page)]
    assert len(ids) == len(set(ids)), "a case shown on two pages"
    return ids


def _count(page: Any) -> int:
    text = page.inner_text("#shown-count")
    assert text.endswith(("cases match", "case matches")), text
    return int(text.split()[0])


def _options(page: Any, select: str) -> list[str]:
    return page.eval_on_selector_all(f"{select} option", "els => els.map(e => e.value)")


# ---------------------------------------------------------------------------------------------------------------
# end to end


def test_the_run_made_every_kind_of_case(e2e_run: Run):
    """The scenario the browser tests lean on, checked in SQL: the responder's plan is what was stored."""
    ids, truth = e2e_run.ids, e2e_run.truth
    planned = {name: set() for name in PAIRED}
    for i, case_id in enumerate(ids):
        incumbent_ok, candidate_ok = PLAN[i % 10]
        candidate_ok = candidate_ok and i not in (HTTP_500_CASE, INVALID_JSON_CASE)
        planned[{(True, False): "regression", (False, True): "win", (False, False): "both_fail",
                 (True, True): "both_pass"}[(incumbent_ok, candidate_ok)]].add(case_id)
    assert truth["paired"] == {CANDIDATE: planned}
    assert [len(planned[name]) for name in PAIRED] == [48, 24, 36, 12]
    assert truth["http_500"] == {ids[HTTP_500_CASE]} and truth["invalid_json"] == {ids[INVALID_JSON_CASE]}
    assert len(truth["failing"]) == 108  # three pages of cases


def test_summary_numbers_equal_duckdb(e2e: Opened, e2e_run: Run):
    page = e2e.page
    cells = page.eval_on_selector_all("#summary tr[data-provider]", """rows => rows.map(r => [r.dataset.provider,
        Object.fromEntries(Array.from(r.querySelectorAll('td[data-metric]')).map(td => [td.dataset.metric,
        [td.dataset.value, td.innerText]]))])""")
    assert [provider for provider, _ in cells] == [INCUMBENT, CANDIDATE]  # incumbent first
    truth = e2e_run.truth["summary"]
    assert set(truth) == {INCUMBENT, CANDIDATE}
    for provider, shown in cells:
        want = truth[provider]
        value = {metric: raw for metric, (raw, _) in shown.items()}
        text = {metric: txt.strip() for metric, (_, txt) in shown.items()}
        assert set(value) >= {"pass_rate", "passed", "answered", "errors", "invalid_rate", "latency_p50_ms",
                              "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms", "tokens_per_1k", "cost_per_1k"}
        assert float(value["pass_rate"]) == pytest.approx(want["pass_rate"], abs=1e-12), provider
        assert int(value["passed"]) == want["passed"], provider
        assert int(value["answered"]) == want["answered"], provider
        assert int(value["errors"]) == want["errors"], provider
        assert float(value["invalid_rate"]) == pytest.approx(want["invalid_rate"], abs=1e-12), provider
        for metric in ("latency_p50_ms", "latency_p95_ms"):
            assert float(value[metric]) == pytest.approx(want[metric], rel=1e-9, abs=1e-6), (provider, metric)
        # what the reader sees says the same
        assert text["pass_rate"].startswith(f"{100 * want['pass_rate']:.1f}%"), provider
        assert text["passed"] == f"{want['passed']} / {len(e2e_run.ids)}", provider
        assert text["errors"] == str(want["errors"]), provider
    # the run's own shape: the candidate's one HTTP 500 and one answer that is not JSON
    assert (truth[CANDIDATE]["errors"], truth[INCUMBENT]["errors"]) == (1, 0)
    assert truth[CANDIDATE]["invalid_rate"] == pytest.approx(1 / 119)
    assert truth[INCUMBENT]["pass_rate"] == pytest.approx(60 / 120)
    assert truth[CANDIDATE]["pass_rate"] == pytest.approx(36 / 120)


def test_paired_counts_equal_duckdb(e2e: Opened, e2e_run: Run):
    shown = e2e.page.eval_on_selector_all("#paired tr[data-candidate]", """rows => rows.map(r => [r.dataset.candidate,
        Object.fromEntries(Array.from(r.querySelectorAll('td[data-outcome]')).map(td => [td.dataset.outcome,
        [Number(td.dataset.value), td.innerText.trim()]]))])""")
    want = e2e_run.truth["paired"]
    assert [candidate for candidate, _ in shown] == list(want) == [CANDIDATE]
    for candidate, cells in shown:
        assert {name: value for name, (value, _) in cells.items()} == {
            name: len(want[candidate][name]) for name in PAIRED}
        assert {name: text for name, (_, text) in cells.items()} == {
            name: str(len(want[candidate][name])) for name in PAIRED}


def test_outcome_filter_and_paired_links_list_the_cases_of_duckdb(e2e: Opened, e2e_run: Run):
    page, paired = e2e.page, e2e_run.truth["paired"][CANDIDATE]
    assert _options(page, "#f-outcome") == ["failing", *PAIRED, "all"]
    for outcome in PAIRED:
        _set_filters(page, outcome=outcome)
        assert set(_all_shown(page)) == paired[outcome], outcome
        assert _count(page) == len(paired[outcome])
    _set_filters(page, outcome="regression")
    first = page.eval_on_selector("#cases div.case", "e => e.querySelector('h3').innerText")
    assert f"regression ({CANDIDATE})" in first
    # the links in the paired table set the outcome and the provider filters
    for outcome in ("regression", "win", "both_fail"):
        _set_filters(page, outcome="all")
        page.click(f'#paired tr[data-candidate="{CANDIDATE}"] a[data-filter-outcome="{outcome}"]')
        assert page.input_value("#f-outcome") == outcome
        assert page.input_value("#f-provider") == CANDIDATE
        assert set(_all_shown(page)) == paired[outcome], outcome
        assert _count(page) == len(paired[outcome])
    # one provider: the cases it fails, whoever else passes
    _set_filters(page, provider=INCUMBENT)
    assert set(_all_shown(page)) == e2e_run.truth["incumbent_fails"] == paired["win"] | paired["both_fail"]
    _set_filters(page, outcome="all")
    assert _count(page) == len(e2e_run.ids)


def test_where_kind_and_text_filters(e2e: Opened, e2e_run: Run):
    page, truth, ids = e2e.page, e2e_run.truth, e2e_run.ids
    assert "total" in _options(page, "#f-where")
    _set_filters(page, where="total")
    listed = []
    for _ in _pages(page):
        listed += _shown(page)
        # every case shown has a failed `total` cell (the candidate's column, or the incumbent's)
        rows = page.eval_on_selector_all("#cases div.case", """cases => cases.map(c => [c.dataset.caseId,
            Array.from(c.querySelectorAll('table tr')).filter(tr => tr.cells[0] && tr.cells[0].innerText === 'total')
                 .map(tr => Array.from(tr.cells).slice(2).some(td => td.classList.contains('bad')))])""")
        assert rows and all(failed == [True] for _, failed in rows), rows
    assert set(listed) == truth["wrong_total"] and len(listed) == len(truth["wrong_total"])

    kinds = _options(page, "#f-kind")
    assert {"error: http_500", "invalid JSON", "wrong value"} <= set(kinds)
    _set_filters(page, kind="error: http_500")
    assert _all_shown(page) == sorted(truth["http_500"]) == [ids[HTTP_500_CASE]]
    assert "error: HTTP 500: upstream overloaded" in page.inner_text("#cases")
    _set_filters(page, kind="invalid JSON")
    assert _all_shown(page) == sorted(truth["invalid_json"]) == [ids[INVALID_JSON_CASE]]

    # a case id typed into the search box: that case alone (any case, in "all cases"; upper case too)
    for i in (47, 40):
        target = ids[i]
        assert [other for other in ids if target in other] == [target]
        _set_filters(page, outcome="all", text=target.upper())
        assert _shown(page) == [target]
        assert page.inner_text("#shown-count") == "1 case matches"
    # text inside an output, whatever its case
    _set_filters(page, text="sorry, I CANNOT read")
    assert _shown(page) == [ids[INVALID_JSON_CASE]]
    _set_filters(page, text="no such text anywhere")
    assert _shown(page) == [] and "No case matches these filters." in page.inner_text("#cases")
    assert page.inner_text("#page-info") == "page 1 of 1"


def test_pages_of_fifty(e2e: Opened, e2e_run: Run):
    page, truth = e2e.page, e2e_run.truth
    _set_filters(page)
    n = len(truth["failing"])
    assert _count(page) == n == 108
    assert page.inner_text("#page-info") == "page 1 of 3"
    assert page.is_disabled("#page-prev") and not page.is_disabled("#page-next")
    first = _shown(page)
    page.click("#page-next")
    assert page.inner_text("#page-info") == "page 2 of 3"
    second = _shown(page)
    page.click("#page-next")
    assert page.inner_text("#page-info") == "page 3 of 3"
    third = _shown(page)
    assert page.is_disabled("#page-next") and not page.is_disabled("#page-prev")
    assert [len(first), len(second), len(third)] == [PAGE_SIZE, PAGE_SIZE, n - 2 * PAGE_SIZE]
    assert set(first) | set(second) | set(third) == truth["failing"]
    assert len(set(first + second + third)) == n
    page.click("#page-prev")
    assert page.inner_text("#page-info") == "page 2 of 3" and _shown(page) == second
    page.click("#page-prev")
    assert page.inner_text("#page-info") == "page 1 of 3" and _shown(page) == first
    assert page.is_disabled("#page-prev")
    # regressions come first
    regressions = truth["paired"][CANDIDATE]["regression"]
    assert set((first + second)[: len(regressions)]) == regressions
    # a filter goes back to the first page
    page.click("#page-next")
    _set_filters(page, outcome="all")
    assert page.inner_text("#page-info") == "page 1 of 3" and _count(page) == len(e2e_run.ids)


def test_page_as_a_whole(e2e: Opened, e2e_run: Run):
    page = e2e.page
    assert page.get_attribute("body", "data-cases-loaded") == str(len(e2e_run.ids))
    assert page.is_hidden("#nojs-note")
    assert page.inner_text("#cases-heading") == f"Failed cases (108 of {len(e2e_run.ids)})"
    charts = page.eval_on_selector_all("figure.chart", "els => els.map(e => [e.id, !!e.querySelector('svg')])")
    assert ["chart-latency", True] in charts and all(has_svg for _, has_svg in charts)
    _set_filters(page)
    shot = e2e_run.tmp / "report.jpg"  # JPEG: a third of the time of a PNG of this 20,000-pixel page
    page.screenshot(path=str(shot), full_page=True, quality=60)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:3] == b"\xff\xd8\xff"
    assert e2e.errors == [] and e2e.dialogs == []


# ---------------------------------------------------------------------------------------------------------------
# untrusted text


def _scan(page: Any, seen: dict[str, Any]) -> None:
    found = page.evaluate(DOM_SCAN)
    seen["bad"] |= set(found["bad"])
    seen["frames"] = max(seen["frames"], found["frames"])
    seen["stray_svg"] = max(seen["stray_svg"], found["stray_svg"])
    seen["scripts"].add(tuple(found["scripts"]))
    seen["xss"].add(page.evaluate("() => window.__xss === undefined ? null : window.__xss"))


def _open_details(page: Any, click: bool = False) -> None:
    if click:  # a reader's click on the first, then the rest at once
        page.locator("#cases details:not([open]) > summary").first.click()
    page.eval_on_selector_all("details", "els => els.forEach(d => { d.open = true; })")


def test_payloads_in_outputs_gold_inputs_and_ids_stay_text(open_report: Callable[..., Opened], xss_run: Run):
    opened = open_report(xss_run.report)
    page = opened.page
    seen: dict[str, Any] = {"bad": set(), "frames": 0, "stray_svg": 0, "scripts": set(), "xss": set()}
    assert page.get_attribute("body", "data-cases-loaded") == "60"
    _open_details(page, click=True)
    assert page.locator("#cases details").first.get_attribute("open") is not None
    _scan(page, seen)

    # every value of every filter, every page of each, every <details> open; searches for the payloads' pieces
    states = 0
    for name in ("outcome", "provider", "where", "kind"):
        for value in _options(page, f"#f-{name}"):
            _set_filters(page, **{name: value})
            assert page.input_value(f"#f-{name}") == value
            for _ in _pages(page):
                _open_details(page)
                _scan(page, seen)
                states += 1
    for text in ("script", "onerror", "javascript:", "<", '"'):
        _set_filters(page, outcome="all", text=text)
        for _ in _pages(page):
            _open_details(page)
            _scan(page, seen)
    # every link, clicked
    links = page.locator("a").all()
    assert len(links) == 3, "links beyond the paired table's three"
    for link in links:
        link.click()
        _scan(page, seen)
    # every case, every details open
    _set_filters(page, outcome="all")
    text = ""
    for _ in _pages(page):
        _open_details(page)
        _scan(page, seen)
        text += page.inner_text("body")

    assert states >= 15
    assert seen["xss"] == {None}, "a payload ran"
    assert opened.dialogs == []
    assert opened.errors == []
    assert seen["bad"] == set(), "event handlers or javascript: URLs in the DOM"
    assert (seen["frames"], seen["stray_svg"]) == (0, 0), "frames, images or SVG from the payloads in the DOM"
    assert seen["scripts"] == {("cases-data", "report-meta", "inline")}, "scripts beyond the report's own"

    # the payloads are there, as text
    for payload in [*PAYLOADS, ALL_PAYLOADS, *PAYLOAD_IDS]:
        assert payload in text, payload
    _set_filters(page, outcome="all", text="acme <script>")
    assert _shown(page) == [xss_run.ids[0]]
    _open_details(page)
    # the gold value and the incumbent's answer in the field table, the candidate's total, the input
    assert page.inner_text("#cases div.case").count(ALL_PAYLOADS) >= 4
    _set_filters(page, outcome="all", text=PAYLOAD_IDS[0])
    assert _shown(page) == [PAYLOAD_IDS[0]]
    _set_filters(page, kind="error: http_500")
    assert _shown(page) == [xss_run.ids[4]]
    assert f"error: HTTP 500: {ALL_PAYLOADS}" in page.inner_text("#cases")  # the server's error message


WIDTH = """() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
    summary: Math.ceil(document.getElementById('summary').getBoundingClientRect().right)})"""


@pytest.mark.parametrize("javascript", [True, False])
def test_the_page_fits_a_1280_pixel_window(open_report: Callable[..., Opened], xss_run: Run, javascript: bool):
    """The summary table fits the window, and a 4,000-character unbroken output and a 3,000-character URL in an
    input wrap instead of widening the page (it was 16,070 px wide)."""
    opened = open_report(xss_run.report, javascript=javascript)
    page = opened.page
    if javascript:
        _set_filters(page, outcome="all", text="XXXXXXXXXX")
        assert _shown(page) == [xss_run.ids[5]]
    _open_details(page)
    assert "X" * 3000 in page.inner_text("body")
    width = page.evaluate(WIDTH)
    assert width["window"] == 1280
    assert width["summary"] <= 1280 and width["page"] <= 1280, width


def test_payloads_stay_text_without_javascript(open_report: Callable[..., Opened], xss_run: Run):
    """With scripts off, the first page of failed cases comes from the template: the same payloads, inert."""
    opened = open_report(xss_run.report, javascript=False)
    page = opened.page
    assert page.get_attribute("body", "data-cases-loaded") is None
    assert len(_shown(page)) == PAGE_SIZE
    found = page.evaluate(DOM_SCAN)
    assert found["bad"] == [] and found["frames"] == 0 and found["stray_svg"] == 0
    assert found["scripts"] == ["cases-data", "report-meta", "inline"]
    _open_details(page)
    text = page.inner_text("body")
    for payload in [*PAYLOADS, ALL_PAYLOADS, *PAYLOAD_IDS]:
        assert payload in text, payload
    assert opened.dialogs == []


def test_a_judged_run_shows_its_judges_and_filters_on_their_verdicts(open_report: Callable[..., Opened],
                                                                     judged_report: Path):
    opened = open_report(judged_report)
    page = opened.page
    judges = page.inner_text("#judges ~ div.judge")
    assert "each candidate against the incumbent" in judges
    assert "The orders disagreed on 1 of 3 judged cases" in judges
    assert "agreed with the humans on 100.0%" in judges
    assert "judged worse" in _options(page, "#f-kind")
    _set_filters(page, kind="judged worse")
    assert _all_shown(page) == ["c2"]
    _set_filters(page, kind="judge gave no verdict")
    assert _all_shown(page) == ["c4"]
    _set_filters(page, outcome="all")
    assert page.evaluate("() => window.__xss") is None
    assert not opened.errors and not opened.dialogs
