"""Scoring without gold (the `agreement` scorer), reading captured traffic (`proxy.wire`), redaction
(`proxy.privacy`) and suites whose cases carry their own messages (`prompt.messages_field`)."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import answer

from harness.errors import HarnessError, SuiteError
from harness.providers.base import Completion
from harness.proxy.privacy import Redactor
from harness.proxy.wire import Unsupported, api_of, decoded, parse_answer, parse_request
from harness.scoring.agreement import AgreementScorer, is_refusal
from harness.suite.load import Case, load_suite


def judge(reference, text, finish="stop", **inputs):
    scores = AgreementScorer()(Case("c", inputs, reference, 1), Completion(
        text=text, model="m", input_tokens=1, output_tokens=1, ttft_ms=1, latency_ms=1, finish_reason=finish))
    return {s.metric: s for s in scores}


@pytest.mark.parametrize(("reference", "text", "agrees"), [
    ({"label": "spam"}, '{"label": " SPAM "}', True),  # normalised
    ({"label": "spam"}, '{"label": "spam", "reason": "other words"}', True),  # the label decides
    ({"label": "spam"}, '{"label": "ham"}', False),
    ({"label": "spam"}, "spam", False),  # not the JSON object the reference is
    ({"total": "10.00", "date": "2020-01-02"}, '```json\n{"date": "2020-01-02", "total": "10.00"}\n```', True),
    ({"total": "10.00", "date": "2020-01-02"}, '{"total": "10.00"}', False),
    ("Paris", "paris.", True),
    ("Paris", "Lyon", False),
    ([1, 2], "[1, 2]", True),
])
def test_agreement_is_the_same_answer_after_normalisation(reference, text, agrees):
    assert judge(reference, text)["case_pass"].passed is agrees


def test_json_answers_are_compared_field_by_field():
    scores = judge({"total": "10.00", "date": "2020-01-02"}, '{"total": "10.00", "date": "2020-01-03", "x": 1}')
    assert scores["agree.total"].passed and not scores["agree.date"].passed and not scores["agree.x"].passed
    assert scores["agree.date"].detail == {"reference": "2020-01-02", "pred": "2020-01-03"}


def test_validity_against_the_requests_schema_and_refusals_need_no_reference():
    schema = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}}, "required": ["label"]}
    bad = judge({"label": "spam"}, '{"label": "eggs"}', response_schema=schema)
    assert bad["valid"].passed is False and "label" in bad["valid"].detail["error"]
    assert judge({"label": "spam"}, '{"label": "spam"}', response_schema=schema)["valid"].passed
    assert judge({"label": "spam"}, "not json", response_schema=schema)["valid"].passed is False
    # the reference itself must be valid: agreeing with an invalid answer is not a pass
    assert judge({"label": "eggs"}, '{"label": "eggs"}', response_schema=schema)["case_pass"].passed is False
    assert judge("Paris", "I'm sorry, but I can't help with that.")["refusal"].value == 1.0
    assert judge("Paris", "Paris")["refusal"].value == 0.0
    assert is_refusal("", "content_filter") and not is_refusal("Sorry for the delay: your order shipped.")


def test_no_reference_fails_with_the_reason():
    scores = judge(None, "Paris")
    assert scores["case_pass"].passed is False and "no reference" in scores["case_pass"].detail["reason"]


def test_wire_reads_requests_of_both_apis():
    openai_body = {"model": "gpt-4o-mini", "messages": [{"role": "developer", "content": "Be brief."},
                                                        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                   "max_completion_tokens": 50, "temperature": 0.3, "user": "u-1", "stream": True,
                   "response_format": {"type": "json_schema",
                                       "json_schema": {"name": "x", "schema": {"type": "object"}}}}
    captured = parse_request("openai", json.dumps(openai_body).encode())
    assert captured.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert captured.params == {"temperature": 0.3, "max_tokens": 50} and captured.stream
    assert captured.response_schema == {"type": "object"} and captured.json_output
    anthropic_body = {"model": "claude-x", "system": [{"type": "text", "text": "Sys"}], "max_tokens": 9,
                      "messages": [{"role": "user", "content": "Hi"}]}
    captured = parse_request("anthropic", json.dumps(anthropic_body).encode())
    assert captured.messages[0] == {"role": "system", "content": "Sys"} and captured.params == {"max_tokens": 9}
    for bad in (b"not json", b'{"messages": []}', b'{"model": "m", "messages": "hi"}'):
        with pytest.raises(ValueError):
            parse_request("openai", bad)
    hello = [{"role": "user", "content": "hi"}]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    for unsupported in ({"tools": [{"type": "function"}]}, {"n": 2}, {"messages": image}):
        with pytest.raises(Unsupported):
            parse_request("openai", json.dumps({"model": "m", "messages": hello, **unsupported}).encode())
    assert (api_of("/v1/chat/completions"), api_of("/v1/messages"), api_of("/v1/models")) == \
        ("openai", "anthropic", None)


def test_wire_reads_a_stream_whose_events_are_split_across_pieces_with_ttft_from_the_first_text():
    events = [b'event: message_start\ndata: {"type": "message_start", "message": {"model": "claude-x", "usage": '
              b'{"input_tokens": 5, "cache_read_input_tokens": 2}}}\n\n',
              b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"type": "text_delta", ',
              b'"text": "Par"}}\n\nevent: content_block_delta\ndata: {"type": "content_block_delta", "delta": '
              b'{"type": "text_delta", "text": "is"}}\n\n',
              b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, '
              b'"usage": {"output_tokens": 2}}\n\nevent: message_stop\ndata: {"type": "message_stop"}\n\n']
    chunks = [(10.0 + i, piece) for i, piece in enumerate(events)]
    got = parse_answer("anthropic", 200, "text/event-stream", chunks, 10.0, datetime.now(UTC))
    assert (got.text, got.model, got.input_tokens, got.output_tokens, got.finish_reason) == \
        ("Paris", "claude-x", 7, 2, "end_turn")
    assert (got.ttft_ms, got.latency_ms, got.error) == (2000.0, 3000.0, None)
    cut = parse_answer("anthropic", 200, "text/event-stream", chunks[:3], 10.0, datetime.now(UTC))
    assert cut.error_kind == "truncated" and cut.text == "Paris"


def test_wire_reads_compressed_and_failed_answers():
    body = json.dumps({"object": "chat.completion", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}]}).encode()
    packed = gzip.compress(body)
    pieces = decoded([(1.0, packed[:10]), (2.0, packed[10:])], "gzip")
    got = parse_answer("openai", 200, "application/json", pieces, 0.5, datetime.now(UTC))
    assert (got.text, got.output_tokens, got.error) == ("ok", 1, None)
    assert decoded([(1.0, b"x")], "br") is None
    failed = parse_answer("openai", 429, "application/json", [(1.0, b'{"error": {"message": "slow down"}}')], 0.5,
                          datetime.now(UTC))
    assert (failed.error_kind, failed.error) == ("http_429", "HTTP 429: slow down")


def test_redaction_of_named_patterns_custom_ones_and_keys():
    redactor = Redactor(["email", "card", r"ACME-\d+"])
    text = redactor.text("mail a.b@example.co.uk, card 4111-1111-1111-1111, not a card 1234 5678 9012 3456, "
                         "ticket ACME-42, key sk-proj-abcdefghijklmnop")
    assert "[REDACTED:email]" in text and "[REDACTED:card]" in text and "[REDACTED:custom3]" in text
    assert "1234 5678 9012 3456" in text  # fails the Luhn check: not a card number
    assert "sk-proj-abcdefghijklmnop" not in text
    assert redactor.value([{"content": "x@y.io"}]) == [{"content": "[REDACTED:email]"}]
    with pytest.raises(HarnessError, match="not a regular expression"):
        Redactor(["(unclosed"])


def _suite(tmp_path: Path, cases: str) -> Path:
    (tmp_path / "suite.toml").write_text(
        'name = "t"\ntask = "traffic"\n[prompt]\nmessages_field = "messages"\n[output]\nformat = "text"\n'
        '[[scorers]]\nkind = "agreement"\n[[providers]]\nid = "local:smollm2-135m"\nrole = "candidate"\n')
    (tmp_path / "cases.jsonl").write_text(cases)
    return tmp_path


def test_a_suite_whose_cases_carry_their_messages_needs_no_template(tmp_path):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    suite = load_suite(_suite(tmp_path, json.dumps({"id": "a", "messages": messages, "gold": "x"}) + "\n"))
    assert suite.cases[0].messages == messages and suite.cases[0].gold == "x"
    assert suite.spec.task == "traffic" and suite.spec.scorers[0].kind == "agreement"


@pytest.mark.parametrize(("row", "says"), [
    ({"id": "a", "gold": "x"}, "cases.jsonl line 1: missing field 'messages'"),
    ({"id": "a", "messages": [], "gold": "x"}, "line 1: 'messages' must be a non-empty list"),
    ({"id": "a", "messages": [{"role": "user"}], "gold": "x"}, "line 1: 'messages'[0] must be an object with a text"),
])
def test_bad_messages_name_the_line(tmp_path, row, says):
    with pytest.raises(SuiteError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_suite(_suite(tmp_path, json.dumps(row) + "\n"))


def test_conftest_answer_is_scored_like_any_completion():
    assert AgreementScorer()(Case("c", {}, "yes", 1), answer("Yes!"))[-1].passed
