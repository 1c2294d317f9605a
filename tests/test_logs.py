from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError
from harness.providers.logs import LogEntry, LogError, LogMatch, match_log, messages_hash, normalize_messages, read_log
from harness.suite.load import Case, load_suite

ANSWER = '{"company": "ACME SDN BHD", "date": "11/01/2019", "address": "1 JALAN", "total": "327.00"}'


def openai_line(case: Case, *, case_id: str | None = None, answer: str = ANSWER, **top: Any) -> dict[str, Any]:
    """A chat.completions call as production would log it: system + user messages, usage with cached tokens."""
    line: dict[str, Any] = {
        "request": {
            "model": "gpt-4o-mini",
            "messages": case.messages,
            "temperature": 0,
            "response_format": {"type": "json_object"},
        },
        "response": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1714564800,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": 512,
                "completion_tokens": 41,
                "total_tokens": 553,
                "prompt_tokens_details": {"cached_tokens": 384},
            },
        },
    }
    if case_id is not None:
        line["case_id"] = case_id
    return line | top


def anthropic_line(case: Case, *, case_id: str | None = None, answer: str = ANSWER, **top: Any) -> dict[str, Any]:
    """A Messages call: top-level system (text blocks) and the user content as a list of text blocks."""
    system, user = case.messages[0]["content"], case.messages[1]["content"]
    half = len(user) // 2
    line: dict[str, Any] = {
        "request": {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 200,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "  " + user[:half]},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                        {"type": "text", "text": user[half:] + "\n"},
                    ],
                }
            ],
        },
        "response": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 20,
                "cache_creation_input_tokens": 8,
                "cache_read_input_tokens": 400,
                "output_tokens": 41,
            },
        },
    }
    if case_id is not None:
        line["case_id"] = case_id
    return line | top


def write_log(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def cases(mini_suite: Path) -> list[Case]:
    return load_suite(mini_suite).cases


def pairs(cases: list[Case]) -> list[tuple[str, list[dict[str, str]]]]:
    return [(case.id, case.messages) for case in cases]


def test_both_formats_normalize_to_the_cases_rendered_messages(tmp_path: Path, cases: list[Case]):
    case = cases[0]
    entries = read_log(write_log(tmp_path / "prod.jsonl", [openai_line(case), anthropic_line(case)]))
    openai, anthropic = entries
    assert (openai.format, anthropic.format) == ("openai", "anthropic")
    assert openai.messages == case.messages
    assert anthropic.messages == case.messages
    assert messages_hash(openai.messages) == messages_hash(anthropic.messages) == messages_hash(case.messages)
    assert messages_hash(cases[1].messages) != messages_hash(case.messages)
    assert openai.text == anthropic.text == ANSWER
    assert (openai.line, anthropic.line) == (1, 2)


def test_normalize_messages_developer_role_blocks_and_extra_keys():
    messages = [
        {"role": "developer", "content": " Be brief. "},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b "}], "name": "x"},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    assert normalize_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    system = [{"type": "text", "text": "You "}, {"type": "text", "text": "extract.\n"}]
    assert normalize_messages([{"role": "user", "content": "hi"}], system) == [
        {"role": "system", "content": "You extract."},
        {"role": "user", "content": "hi"},
    ]
    assert normalize_messages([{"role": "user", "content": "hi"}], "sys") == normalize_messages(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    )
    developer, system_message = [{"role": "developer", "content": "s"}], [{"role": "system", "content": "s "}]
    assert messages_hash(developer) == messages_hash(system_message)


def test_usage_model_and_finish_reason_of_both_formats(tmp_path: Path, cases: list[Case]):
    openai, anthropic = read_log(write_log(tmp_path / "prod.jsonl", [openai_line(cases[0]), anthropic_line(cases[0])]))
    assert (openai.input_tokens, openai.cached_input_tokens, openai.output_tokens) == (512, 384, 41)
    assert openai.model == "gpt-4o-mini-2024-07-18"
    assert openai.finish_reason == "stop"
    # Anthropic's input_tokens leaves out cached tokens: all input = 20 fresh + 400 read + 8 written
    assert (anthropic.input_tokens, anthropic.cached_input_tokens, anthropic.output_tokens) == (428, 400, 41)
    assert anthropic.model == "claude-3-5-haiku-20241022"
    assert anthropic.finish_reason == "end_turn"
    assert openai.error is None and anthropic.error is None


def test_missing_usage_is_none_and_model_falls_back_to_the_request(tmp_path: Path, cases: list[Case]):
    first, second = openai_line(cases[0]), anthropic_line(cases[0])
    for line in (first, second):
        del line["response"]["usage"], line["response"]["model"]
    second["response"]["usage"] = {"input_tokens": 30, "output_tokens": 5}
    openai, anthropic = read_log(write_log(tmp_path / "prod.jsonl", [first, second]))
    assert (openai.input_tokens, openai.output_tokens, openai.cached_input_tokens) == (None, None, None)
    assert openai.model == "gpt-4o-mini"
    assert (anthropic.input_tokens, anthropic.output_tokens, anthropic.cached_input_tokens) == (30, 5, None)
    assert anthropic.model == "claude-3-5-haiku-latest"


def test_latency_ttft_and_timestamps(tmp_path: Path, cases: list[Case]):
    case = cases[0]
    no_created = openai_line(case, timestamp=None)
    del no_created["response"]["created"]
    lines = [
        openai_line(case, latency_ms=812.5, ttft_ms=190, timestamp="2024-05-01T12:00:00Z"),
        anthropic_line(case, duration_ms=640, created_at=1714564800),
        anthropic_line(case, timestamp="2024-05-01 14:00:00+02:00"),
        anthropic_line(case, timestamp="2024-05-01T12:00:00"),  # no offset: UTC
        anthropic_line(case, timestamp=1714564800123),  # milliseconds
        openai_line(case),  # the response's `created`
        anthropic_line(case),
        no_created,
    ]
    entries = read_log(write_log(tmp_path / "prod.jsonl", lines))
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert (entries[0].latency_ms, entries[0].ttft_ms, entries[0].started_at) == (812.5, 190.0, noon)
    assert (entries[1].latency_ms, entries[1].ttft_ms, entries[1].started_at) == (640.0, None, noon)
    assert entries[2].started_at == noon
    assert entries[3].started_at == noon and entries[3].started_at.tzinfo is not None
    assert entries[4].started_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert entries[5].started_at == noon and entries[5].latency_ms is None
    assert entries[6].started_at is None
    assert entries[7].started_at is None


def test_case_id_from_top_level_or_metadata(tmp_path: Path, cases: list[Case]):
    case = cases[0]
    in_request = openai_line(case)
    in_request["request"]["metadata"] = {"case_id": "c-3"}
    lines = [openai_line(case, case_id="c-1"), openai_line(case, metadata={"case_id": 2}), in_request]
    lines.append(openai_line(case))
    assert [e.case_id for e in read_log(write_log(tmp_path / "prod.jsonl", lines))] == ["c-1", "2", "c-3", None]


def test_failed_calls_keep_the_error_and_detect_the_format_from_the_request(tmp_path: Path, cases: list[Case]):
    case = cases[0]

    def failed(line: dict[str, Any], error: Any) -> dict[str, Any]:
        del line["response"]
        return line | {"error": error, "latency_ms": 30000}

    bare_anthropic = anthropic_line(case)
    del bare_anthropic["request"]["system"]
    lines = [
        failed(openai_line(case), "Request timed out."),
        failed(anthropic_line(case), {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        failed(openai_line(case), {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}),
        failed(bare_anthropic, {"message": "connection reset"}),  # max_tokens, no system: Anthropic
        failed(openai_line(case), {"code": 502}),
        failed(openai_line(case), "boom") | {"format": "anthropic"},
        anthropic_line(case) | {"response": {"type": "error", "error": {"type": "api_error", "message": "Internal"}}},
    ]
    entries = read_log(write_log(tmp_path / "prod.jsonl", lines))
    assert [e.format for e in entries] == ["openai", "anthropic", "openai", "anthropic", "openai"] + ["anthropic"] * 2
    assert [e.error for e in entries] == [
        "Request timed out.",
        "overloaded_error: Overloaded",
        "rate_limit_exceeded: Rate limit reached",
        "connection reset",
        '{"code": 502}',
        "boom",
        "api_error: Internal",
    ]
    for entry in entries:
        assert entry.text == "" and entry.finish_reason is None and entry.input_tokens is None
        assert entry.messages[-1]["content"] == case.messages[-1]["content"]
    assert entries[0].latency_ms == 30000.0
    assert entries[0].model == "gpt-4o-mini"


def test_request_and_response_logged_as_json_strings(tmp_path: Path, cases: list[Case]):
    line = openai_line(cases[0])
    line = {"request": json.dumps(line["request"]), "response": json.dumps(line["response"])}
    (entry,) = read_log(write_log(tmp_path / "prod.jsonl", [line]))
    assert entry.messages == cases[0].messages and entry.text == ANSWER


def test_match_by_id_input_duplicates_and_leftovers(tmp_path: Path, cases: list[Case]):
    stranger = openai_line(cases[0], case_id="not-a-case")
    stranger["request"]["messages"] = [{"role": "user", "content": "something else"}]
    lines: list[dict[str, Any] | str] = [
        openai_line(cases[0], case_id=cases[0].id),  # 1: by id
        anthropic_line(cases[1]),  # 2: by input
        "",  # 3: blank
        anthropic_line(cases[0]),  # 4: input of case 0, already matched: duplicate
        stranger,  # 5: unknown id, unknown input
        openai_line(cases[2], case_id="old-id-7"),  # 6: unknown id, but the input is case 2's
        openai_line(cases[1], case_id=cases[1].id),  # 7: by id; wins over line 2, which only had the input
        openai_line(cases[0], case_id=cases[0].id),  # 8: duplicate by id
    ]
    entries = read_log(write_log(tmp_path / "prod.jsonl", lines))
    assert [e.line for e in entries] == [1, 2, 4, 5, 6, 7, 8]
    match = match_log(entries, pairs(cases))
    assert isinstance(match, LogMatch)
    assert {case_id: e.line for case_id, e in match.entries.items()} == {cases[0].id: 1, cases[1].id: 7, cases[2].id: 6}
    assert list(match.entries) == [cases[0].id, cases[1].id, cases[2].id]
    assert match.matched_by == {cases[0].id: "id", cases[1].id: "id", cases[2].id: "input"}
    assert match.duplicate_lines == [2, 4, 8]
    assert match.unmatched_lines == [5]
    assert match.unmatched_cases == [c.id for c in cases[3:]]
    assert match.mismatched_inputs == []
    assert match.summary() == (
        "3 of 6 cases matched (2 by id, 1 by input); 3 cases not in the log; "
        "3 log lines repeated an already matched case (lines 2, 4, 8; the first line was used); "
        "1 log line matched no case (line 5)"
    )


def test_every_case_matched_reads_short(tmp_path: Path, cases: list[Case]):
    lines = [anthropic_line(case, case_id=case.id) for case in cases[:3]] + [openai_line(c) for c in cases[3:]]
    match = match_log(read_log(write_log(tmp_path / "prod.jsonl", lines)), pairs(cases))
    assert match.summary() == "6 of 6 cases matched (3 by id, 3 by input)"
    assert match.unmatched_cases == match.unmatched_lines == match.duplicate_lines == []


def test_a_case_matched_by_id_with_a_changed_prompt_is_reported(tmp_path: Path, cases: list[Case]):
    changed = openai_line(cases[0], case_id=cases[0].id)
    changed["request"]["messages"] = [dict(m) for m in cases[0].messages]
    changed["request"]["messages"][0]["content"] = "An older system prompt."
    match = match_log(read_log(write_log(tmp_path / "prod.jsonl", [changed])), pairs(cases[:2]))
    assert match.matched_by == {cases[0].id: "id"}
    assert match.mismatched_inputs == [cases[0].id]
    assert match.summary() == (
        f"1 of 2 cases matched (1 by id, 0 by input); 1 case not in the log; "
        f"1 case matched by id with a logged prompt that differs from the suite's ({cases[0].id})"
    )


def test_cases_sharing_an_input_are_filled_in_order(tmp_path: Path, cases: list[Case]):
    same = [("a", cases[0].messages), ("b", cases[0].messages), ("c", cases[1].messages)]
    lines = [openai_line(cases[0]), anthropic_line(cases[0]), openai_line(cases[0])]
    match = match_log(read_log(write_log(tmp_path / "prod.jsonl", lines)), same)
    assert {k: e.line for k, e in match.entries.items()} == {"a": 1, "b": 2}
    assert match.duplicate_lines == [3]
    assert match.unmatched_cases == ["c"]


def test_summary_lists_at_most_ten_line_numbers():
    match = LogMatch(entries={}, matched_by={}, unmatched_lines=list(range(1, 13)), duplicate_lines=[],
                     unmatched_cases=["x"])
    assert match.summary() == (
        "0 of 1 case matched (0 by id, 0 by input); 1 case not in the log; "
        "12 log lines matched no case (lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, …)"
    )


def test_log_entry_is_frozen(tmp_path: Path, cases: list[Case]):
    (entry,) = read_log(write_log(tmp_path / "prod.jsonl", [openai_line(cases[0])]))
    assert isinstance(entry, LogEntry)
    with pytest.raises(AttributeError):
        entry.text = "x"  # type: ignore[misc]


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(LogError) as err:
        read_log(path)
    assert str(err.value) == f"{path}: no such file; give the path of a JSONL log with one production call a line"
    assert isinstance(err.value, HarnessError)


def test_empty_file(tmp_path: Path):
    path = write_log(tmp_path / "prod.jsonl", ["", "   "])
    with pytest.raises(LogError) as err:
        read_log(path)
    assert str(err.value) == f"{path}: no log lines (the file is empty); it needs one JSON object a line"


def _bad(case: Case, change: str) -> dict[str, Any] | str:
    line = openai_line(case)
    if change == "no_response":
        del line["response"]
    elif change == "no_request":
        del line["request"]
    elif change == "no_messages":
        del line["request"]["messages"]
    elif change == "bad_message":
        line["request"]["messages"] = [{"content": "no role"}]
    elif change == "neither_shape":
        line["response"] = {"output": [{"type": "message"}]}
    elif change == "no_choice_message":
        line["response"]["choices"] = [{"index": 0, "delta": {"content": "{"}}]
    elif change == "bad_timestamp":
        line["timestamp"] = "yesterday"
    elif change == "bad_latency":
        line["latency_ms"] = "812ms"
    elif change == "bad_format":
        del line["response"]
        line |= {"error": "x", "format": "gemini"}
    elif change == "not_json":
        return '{"request": {"messages": []} "response": {}}'
    elif change == "array":
        return "[1, 2]"
    return line


BAD_LINES = {
    "not_json": "not valid JSON (Expecting ',' delimiter); each line must be one JSON object",
    "array": "a JSON array, not an object; each line must be one JSON object",
    "no_response": (
        "needs 'request' and either 'response' or 'error' (found keys: 'request'); "
        "log the request body as sent with the response, or with the error for a failed call"
    ),
    "no_request": (
        "needs 'request' and either 'response' or 'error' (found keys: 'response'); "
        "log the request body as sent with the response, or with the error for a failed call"
    ),
    "no_messages": "request has no 'messages'; log the request body as sent to chat.completions or to Messages",
    "bad_message": "request.messages[0] must be an object with a 'role'",
    "neither_shape": (
        "response is neither an OpenAI chat.completion (with 'choices') nor an Anthropic Message "
        '(with "type": "message"); log the response body as the API returned it'
    ),
    "no_choice_message": (
        "response has 'choices' but no choices[0].message; log the whole chat.completion "
        "(for a streamed call, the message assembled from its chunks)"
    ),
    "bad_timestamp": "timestamp 'yesterday' is neither an ISO 8601 time (e.g. 2024-05-01T12:00:00Z) nor unix seconds",
    "bad_latency": "latency_ms must be a number of milliseconds (>= 0), got '812ms'",
    "bad_format": "format 'gemini' is neither 'openai' nor 'anthropic'; fix it or leave it out",
}


@pytest.mark.parametrize("change", list(BAD_LINES))
def test_a_bad_line_names_file_and_line(tmp_path: Path, cases: list[Case], change: str):
    lines = [openai_line(cases[0]), "", _bad(cases[1], change), openai_line(cases[2])]
    path = write_log(tmp_path / "prod.jsonl", lines)
    with pytest.raises(LogError) as err:
        read_log(path)
    assert str(err.value) == f"{path} line 3: {BAD_LINES[change]}"


def test_not_utf8_names_the_line(tmp_path: Path, cases: list[Case]):
    path = tmp_path / "prod.jsonl"
    path.write_bytes(json.dumps(openai_line(cases[0])).encode() + b'\n{"x": "\xff"}\n')
    with pytest.raises(LogError) as err:
        read_log(path)
    assert str(err.value) == f"{path} line 2: not UTF-8 text (invalid start byte); write the log as UTF-8"
