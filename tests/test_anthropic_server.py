"""The Anthropic test server, driven by the real `anthropic` SDK: it must look like the real API to it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import pytest
from anthropic_server import AnthropicReply, AnthropicServer
from openai_server import Reply

MESSAGES = [{"role": "user", "content": "say hello to me"}]


def client(srv: AnthropicServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.base_url, api_key="sk-ant-test", max_retries=0, timeout=5)


def _post(srv: AnthropicServer, headers: dict[str, str]) -> int:
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": MESSAGES}).encode()
    request = urllib.request.Request(f"{srv.base_url}/v1/messages", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        assert json.load(err)["error"]["type"] == "authentication_error"
        return err.code


def test_stream_helper_gets_text_usage_and_stop_reason():
    reply = AnthropicReply(text="Hello there, friend", chunks=3, cached_tokens=1)
    with AnthropicServer(lambda body: reply) as srv, client(srv).messages.stream(
        model="claude-x", max_tokens=50, system="be brief", messages=MESSAGES
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "Hello there, friend"
    assert len(pieces) == 3
    assert final.model == "claude-x"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 6 - 1  # "be brief" + "say hello to me", less the cached one
    assert final.usage.cache_read_input_tokens == 1
    assert final.usage.output_tokens == 3
    assert srv.requests[0]["system"] == "be brief"
    assert srv.headers[0]["authorization"] == "Bearer sk-ant-test"  # how anthropic 2.x sends api_key


def test_raw_stream_events_in_order():
    with AnthropicServer(lambda body: Reply(text="abcd", chunks=2, finish_reason="length")) as srv:
        events = list(client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES, stream=True))
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [e.delta.text for e in events if e.type == "content_block_delta"] == ["ab", "cd"]
    assert events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == 2
    assert events[0].message.usage.input_tokens == 4


def test_non_streaming_create_returns_message():
    system = [{"type": "text", "text": "one two"}]
    messages = [{"role": "user", "content": [{"type": "text", "text": "three"}]}]
    with AnthropicServer(lambda body: Reply(text="done")) as srv:
        message = client(srv).messages.create(model="m", max_tokens=5, system=system, messages=messages)
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == "done"
    assert message.usage.input_tokens == 3
    assert message.stop_reason == "end_turn"


def test_rate_limit_carries_retry_after():
    reply = Reply(status=429, headers={"retry-after": "7"}, error_message="slow down")
    with AnthropicServer(lambda body: reply) as srv, pytest.raises(anthropic.RateLimitError) as info:
        client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"] == {"type": "rate_limit_error", "message": "slow down"}
    assert info.value.request_id == "req_test"


def test_overloaded_is_529():
    with AnthropicServer(lambda body: Reply(status=529)) as srv, pytest.raises(anthropic.APIStatusError) as info:
        client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES, stream=True)
    assert info.value.status_code == 529
    assert isinstance(info.value, anthropic.InternalServerError)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_error_event_mid_stream_raises():
    with AnthropicServer(lambda body: Reply(text="abcd", error_event=True)) as srv:
        stream = client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES, stream=True)
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            list(stream)


def test_request_validation():
    with AnthropicServer() as srv:
        c = client(srv)
        with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
            c.post("/v1/messages", body={"model": "m", "messages": MESSAGES}, cast_to=object)
        with pytest.raises(anthropic.BadRequestError, match="system"):
            c.messages.create(model="m", max_tokens=5, messages=[{"role": "system", "content": "x"}, *MESSAGES])
        assert _post(srv, {"x-api-key": "sk-ant-test"}) == 200
        assert _post(srv, {}) == 401
        with pytest.raises(anthropic.NotFoundError):
            c.post("/v1/complete", body={}, cast_to=object)
        assert [m.id for m in c.models.list()] == ["claude-test"]


def test_broken_and_truncated_streams():
    broken = AnthropicServer(lambda body: Reply(text="abcd", break_stream=True))
    with broken as srv, pytest.raises(ValueError):  # json.JSONDecodeError, from the malformed data line
        list(client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES, stream=True))
    with AnthropicServer(lambda body: Reply(text="abcd", truncate=True)) as srv:
        events = list(client(srv).messages.create(model="m", max_tokens=5, messages=MESSAGES, stream=True))
    assert [e.delta.text for e in events if e.type == "content_block_delta"] == ["a", "b"]
    assert "message_stop" not in [e.type for e in events]
