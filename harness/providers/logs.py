"""Production logs as the incumbent's answers: read a JSONL log of real API calls and match it to a suite's cases.

A log is JSONL, one production call a line (blank lines are skipped). Each line is an object:

    {"request":  {...},          # the request body as sent: an OpenAI chat.completions body (`model`,
                                 #   `messages`, ...) or an Anthropic Messages body (`model`, `system`,
                                 #   `messages`, `max_tokens`, ...)
     "response": {...},          # what came back: an OpenAI `chat.completion` object or an Anthropic `Message`
     "case_id": "inv-0042",      # optional: the suite case this call answered
     "latency_ms": 812.5,        # optional, also read as `duration_ms`: the whole call, in milliseconds
     "ttft_ms": 190.0,           # optional: time to the first token, in milliseconds
     "timestamp": "2024-05-01T12:00:00Z"}   # optional, also read as `created_at`

A failed call has `error` instead of `response`: a string, or an object with a `message` (an OpenAI error
body `{"error": {"message": ...}}` and an Anthropic one `{"type": "error", "error": {"message": ...}}` are
read too). `request` and `response` may also be logged as JSON strings holding those objects.

- `case_id` is looked up at the top level, then in a top-level `metadata.case_id`, then in
  `request.metadata.case_id`. A number is taken as its string.
- `timestamp` is an ISO 8601 time (without an offset it is taken as UTC) or unix seconds (a number above
  1e11 is taken as unix milliseconds). Without one, an OpenAI response's `created` is used.
- The format comes from the response: `choices` makes it OpenAI; `"type": "message"`, or a `content` list
  with a `stop_reason`, makes it Anthropic. An error line has no response, so its request decides: a
  top-level `system` key, or an Anthropic error body (`"type": "error"`), means Anthropic; a system or
  developer message in `messages` means OpenAI; otherwise `max_tokens` (which Anthropic requires) without
  any of OpenAI's own keys (`max_completion_tokens`, `response_format`, `seed`, `n`, ...) means Anthropic,
  and anything else OpenAI. A top-level `"format": "openai"` or `"anthropic"` overrides this for error
  lines (a response's shape always decides).
- Message and answer content may be a string or a list of content blocks: the `text` of the text blocks is
  concatenated as is (no separator) and other blocks (images, tool calls) are ignored.

Each line becomes a `LogEntry` whose `messages` are normalized (see `normalize_messages`) so that the same
prompt logged through either API hashes the same as the harness's rendered `Case.messages`. `match_log`
pairs entries with cases: by `case_id` first, then by the hash of the messages.

Every problem raises a one-line `LogError` that names the file and line and says what to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import LogError

FORMATS = ("openai", "anthropic")

# Request keys that only OpenAI's chat.completions takes; with one of them an error line is OpenAI's.
_OPENAI_ONLY_KEYS = frozenset(
    {
        "max_completion_tokens",
        "response_format",
        "seed",
        "n",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "stream_options",
        "parallel_tool_calls",
        "reasoning_effort",
        "store",
        "modalities",
    }
)

_MAX_LISTED = 10


@dataclass(frozen=True)
class LogEntry:
    """One logged production call, normalized across the OpenAI and Anthropic APIs."""

    line: int  # 1-based physical line in the file
    format: str  # "openai" or "anthropic"
    case_id: str | None
    messages: list[dict[str, str]]  # normalized: see normalize_messages
    text: str  # the answer text ("" when the logged call failed)
    model: str | None  # the model the response names (else the request's)
    input_tokens: int | None  # all input tokens, cached ones included
    output_tokens: int | None
    cached_input_tokens: int | None
    latency_ms: float | None
    ttft_ms: float | None
    finish_reason: str | None  # OpenAI finish_reason; Anthropic stop_reason as is
    error: str | None  # the logged error, when the production call failed
    started_at: datetime | None


class _ShapeError(ValueError):
    """A part of a line has the wrong shape; read_log prefixes the file and line."""


def normalize_messages(messages: list[dict], system: str | list | None = None) -> list[dict[str, str]]:
    """Chat messages as `[{"role": ..., "content": ...}]` whatever API they were written for.

    An Anthropic `system` (a string or a list of text blocks) becomes a leading system message; OpenAI's
    `developer` role counts as `system`; each content (a string or a list of content blocks) becomes the
    concatenated text of its text blocks, surrounding whitespace stripped; every other key is dropped.
    Raises `ValueError` when `messages` is not a list of objects with a role.
    """
    if not isinstance(messages, list):
        raise _ShapeError(f"'messages' must be a list, got {_json_type(messages)}")
    out = []
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _ShapeError(f"messages[{index}] must be an object with a 'role'")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _text_of(message.get("content"), f"messages[{index}].content")})
    return out


def messages_hash(messages: list[dict]) -> str:
    """sha256 (hex) of the canonical JSON of the normalized messages: equal for the same prompt via any API."""
    canonical = json.dumps(normalize_messages(messages), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _text_of(content: Any, what: str) -> str:
    """A string, or the concatenated text of a list of content blocks, stripped; None is ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts).strip()
    raise _ShapeError(f"{what} must be a string or a list of content blocks, got {_json_type(content)}")


def read_log(path: str | Path) -> list[LogEntry]:
    """Read a JSONL production log (see the module docstring). Raises `LogError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such file; give the path of a JSONL log with one production call a line")
    entries = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            value = json.loads(raw)
        except UnicodeDecodeError as exc:
            raise LogError(f"{where}: not UTF-8 text ({exc.reason}); write the log as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise LogError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise LogError(f"{where}: a JSON {_json_type(value)}, not an object; each line must be one JSON object")
        try:
            entries.append(_entry(value, number))
        except _ShapeError as exc:
            raise LogError(f"{where}: {exc}") from None
    if not entries:
        raise LogError(f"{path}: no log lines (the file is empty); it needs one JSON object a line")
    return entries


def _entry(row: dict[str, Any], number: int) -> LogEntry:
    request = _object_or_json(row.get("request"))
    response = _object_or_json(row.get("response"))
    error = row.get("error")
    if isinstance(response, dict) and response.get("type") == "error":  # an Anthropic error body as the response
        error, response = response, None
    if not isinstance(request, dict) or (response is None and error is None):
        found = ", ".join(f"'{key}'" for key in list(row)[:8]) or "none"
        raise _ShapeError(
            f"needs 'request' and either 'response' or 'error' (found keys: {found}); "
            "log the request body as sent with the response, or with the error for a failed call"
        )
    if "messages" not in request:
        raise _ShapeError("request has no 'messages'; log the request body as sent to chat.completions or to Messages")
    try:
        messages = normalize_messages(request["messages"], request.get("system"))
    except _ShapeError as exc:
        raise _ShapeError(f"request.{exc}") from None

    started_at = _timestamp(row)
    if response is not None:
        fmt = _response_format(response)
        parsed = openai_answer(response) if fmt == "openai" else anthropic_answer(response)
        if started_at is None and fmt == "openai" and _is_number(response.get("created")):
            started_at = _from_unix(response["created"])
    else:
        fmt = _error_format(row, request, error)
        parsed = dict.fromkeys(("model", "input_tokens", "output_tokens", "cached_input_tokens", "finish_reason"))
        parsed["text"] = ""
    model = parsed.pop("model") or (request.get("model") if isinstance(request.get("model"), str) else None)
    return LogEntry(
        line=number,
        format=fmt,
        case_id=_case_id(row, request),
        messages=messages,
        model=model,
        latency_ms=_millis(row, "latency_ms", "duration_ms"),
        ttft_ms=_millis(row, "ttft_ms"),
        error=_error_text(error) if error is not None else None,
        started_at=started_at,
        **parsed,
    )


def _object_or_json(value: Any) -> Any:
    """A request or response logged as a JSON string is read as the object it holds."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, dict) else value
    return value


def _response_format(response: Any) -> str:
    if isinstance(response, dict):
        if "choices" in response:
            return "openai"
        if response.get("type") == "message" or (
            isinstance(response.get("content"), list) and "stop_reason" in response
        ):
            return "anthropic"
    raise _ShapeError(
        "response is neither an OpenAI chat.completion (with 'choices') nor an Anthropic Message "
        "(with \"type\": \"message\"); log the response body as the API returned it"
    )


def openai_answer(response: dict[str, Any]) -> dict[str, Any]:
    """The answer of an OpenAI `chat.completion` body: text, model, input, output and cached input tokens,
    finish reason. Raises ValueError for a body that is not one."""
    choices = response["choices"]
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        raise _ShapeError(
            "response has 'choices' but no choices[0].message; log the whole chat.completion "
            "(for a streamed call, the message assembled from its chunks)"
        )
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    return {
        "text": _text_of(first["message"].get("content"), "response.choices[0].message.content"),
        "model": response.get("model") if isinstance(response.get("model"), str) else None,
        "input_tokens": _int(usage.get("prompt_tokens")),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cached_input_tokens": _int(details.get("cached_tokens")),
        "finish_reason": first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None,
    }


def anthropic_answer(response: dict[str, Any]) -> dict[str, Any]:
    """The answer of an Anthropic `Message` body, as `openai_answer` gives it (input tokens include the tokens
    read from and written to the prompt cache)."""
    usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    fresh = _int(usage.get("input_tokens"))
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_creation = _int(usage.get("cache_creation_input_tokens"))
    stop = response.get("stop_reason")
    return {
        "text": _text_of(response.get("content"), "response.content"),
        "model": response.get("model") if isinstance(response.get("model"), str) else None,
        # Anthropic's input_tokens leaves out the tokens read from or written to the prompt cache
        "input_tokens": None if fresh is None else fresh + (cache_read or 0) + (cache_creation or 0),
        "output_tokens": _int(usage.get("output_tokens")),
        "cached_input_tokens": cache_read,
        "finish_reason": stop if isinstance(stop, str) else None,
    }


def _error_format(row: dict[str, Any], request: dict[str, Any], error: Any) -> str:
    """Which API a failed call went to, from the request alone (see the module docstring)."""
    given = row.get("format")
    if given is not None:
        if given not in FORMATS:
            raise _ShapeError(f"format {given!r} is neither 'openai' nor 'anthropic'; fix it or leave it out")
        return given
    if "system" in request or (isinstance(error, dict) and error.get("type") == "error"):
        return "anthropic"
    messages = request["messages"]
    if any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
        return "openai"
    if "max_tokens" in request and not _OPENAI_ONLY_KEYS & request.keys():
        return "anthropic"
    return "openai"


def _error_text(error: Any) -> str:
    """The message of a logged error: a string, `{"message": ...}`, or an API error body nesting one."""
    if isinstance(error, str):
        return error.strip() or "error"
    if isinstance(error, dict):
        if not isinstance(error.get("message"), str) and isinstance(error.get("error"), dict):
            error = error["error"]  # {"error": {...}} (OpenAI) or {"type": "error", "error": {...}} (Anthropic)
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            kind = error.get("type") or error.get("code")
            if isinstance(kind, str) and kind and kind != "error":
                return f"{kind}: {message.strip()}"
            return message.strip()
    return json.dumps(error, ensure_ascii=False, sort_keys=True)


def _case_id(row: dict[str, Any], request: dict[str, Any]) -> str | None:
    candidates = [row.get("case_id")]
    for holder in (row, request):
        metadata = holder.get("metadata")
        if isinstance(metadata, dict):
            candidates.append(metadata.get("case_id"))
    for value in candidates:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _ShapeError(f"case_id must be a string, got {_json_type(value)}")
        return str(value)
    return None


def _millis(row: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = row.get(key)
        if value is None:
            continue
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise _ShapeError(f"{key} must be a number of milliseconds (>= 0), got {value!r}")
        return float(value)
    return None


def _timestamp(row: dict[str, Any]) -> datetime | None:
    for key in ("timestamp", "created_at"):
        value = row.get(key)
        if value is None:
            continue
        if _is_number(value):
            return _from_unix(value)
        if isinstance(value, str):
            try:
                return _from_unix(float(value))
            except ValueError:
                pass
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                pass
            else:
                return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        raise _ShapeError(
            f"{key} {value!r} is neither an ISO 8601 time (e.g. 2024-05-01T12:00:00Z) nor unix seconds"
        )
    return None


def _from_unix(value: float) -> datetime:
    seconds = value / 1000 if value > 1e11 else value  # 1e11 seconds is the year 5138: that is milliseconds
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _ShapeError(f"timestamp {value!r} is out of range for unix seconds") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


@dataclass
class LogMatch:
    """Which log line answers which case, and what was left over on either side."""

    entries: dict[str, LogEntry]  # case id -> the entry used
    matched_by: dict[str, str]  # case id -> "id" or "input"
    unmatched_lines: list[int]  # log lines that matched no case
    duplicate_lines: list[int]  # lines that matched a case another line already matched
    unmatched_cases: list[str]  # case ids with no log line, in suite order
    # case ids matched by id whose logged prompt is not the one the suite renders (the prompt has changed since)
    mismatched_inputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. "290 of 300 cases matched (288 by id, 2 by input); 10 cases not in the log; ..."."""
        total = len(self.entries) + len(self.unmatched_cases)
        by_id = sum(1 for how in self.matched_by.values() if how == "id")
        by_input = sum(1 for how in self.matched_by.values() if how == "input")
        matched = f"{len(self.entries)} of {total} {_plural(total, 'case')} matched"
        parts = [f"{matched} ({by_id} by id, {by_input} by input)"]
        if self.unmatched_cases:
            parts.append(f"{_count(self.unmatched_cases, 'case')} not in the log")
        if self.mismatched_inputs:
            parts.append(
                f"{_count(self.mismatched_inputs, 'case')} matched by id with a logged prompt that differs from "
                f"the suite's ({_listed(self.mismatched_inputs)})"
            )
        if self.duplicate_lines:
            parts.append(
                f"{_count(self.duplicate_lines, 'log line')} repeated an already matched case "
                f"({_lines(self.duplicate_lines)}; the first line was used)"
            )
        if self.unmatched_lines:
            parts.append(f"{_count(self.unmatched_lines, 'log line')} matched no case ({_lines(self.unmatched_lines)})")
        return "; ".join(parts)


def match_log(entries: list[LogEntry], cases: Sequence[tuple[str, list[dict[str, str]]]]) -> LogMatch:
    """Pair log entries with cases `(id, rendered messages)`.

    A line whose `case_id` is a case's id matches it "by id"; a line that matches no case by id but whose
    messages hash equals a case's matches it "by input" (when several cases share that input, the first one
    not yet matched). Id matches are made first, so a line naming the case wins over one that only has its
    input; among lines of the same kind, the first in the file wins and later ones are duplicates.
    """
    case_ids = [case_id for case_id, _ in cases]
    hashes = {case_id: messages_hash(messages) for case_id, messages in cases}
    by_hash: dict[str, list[str]] = {}
    for case_id in case_ids:
        by_hash.setdefault(hashes[case_id], []).append(case_id)

    chosen: dict[str, LogEntry] = {}
    matched_by: dict[str, str] = {}
    duplicates, unmatched, mismatched = [], [], []
    rest = []
    for entry in sorted(entries, key=lambda e: e.line):
        if entry.case_id is None or entry.case_id not in hashes:
            rest.append(entry)
        elif entry.case_id in chosen:
            duplicates.append(entry.line)
        else:
            chosen[entry.case_id] = entry
            matched_by[entry.case_id] = "id"
            if messages_hash(entry.messages) != hashes[entry.case_id]:
                mismatched.append(entry.case_id)
    for entry in rest:
        same_input = by_hash.get(messages_hash(entry.messages))
        if not same_input:
            unmatched.append(entry.line)
            continue
        free = next((case_id for case_id in same_input if case_id not in chosen), None)
        if free is None:
            duplicates.append(entry.line)
            continue
        chosen[free] = entry
        matched_by[free] = "input"

    order = {case_id: index for index, case_id in enumerate(case_ids)}
    return LogMatch(
        entries={case_id: chosen[case_id] for case_id in case_ids if case_id in chosen},
        matched_by={case_id: matched_by[case_id] for case_id in case_ids if case_id in matched_by},
        unmatched_lines=sorted(unmatched),
        duplicate_lines=sorted(duplicates),
        unmatched_cases=[case_id for case_id in case_ids if case_id not in chosen],
        mismatched_inputs=sorted(mismatched, key=order.__getitem__),
    )


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def _count(items: Sequence[Any], noun: str) -> str:
    return f"{len(items)} {_plural(len(items), noun)}"


def _lines(numbers: Sequence[int]) -> str:
    return f"{_plural(len(numbers), 'line')} {_listed(numbers)}"


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(item) for item in items[:_MAX_LISTED])
    return shown + (", …" if len(items) > _MAX_LISTED else "")
