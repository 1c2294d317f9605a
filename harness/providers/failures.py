"""Which failed answers are the infrastructure's (connection, timeout, 5xx, 429 after retries, a dead server,
no answer stored) rather than the model's: the runner re-calls them on resume, the run status and the gate
count them apart.
"""

from __future__ import annotations

from typing import Any

NO_ANSWER = "no answer"  # the provider has no stored response for the case (skipped, or the run was cut short)


SERVER_EXITED = "server_exited"  # the managed model server died under the call (harness.watch); never stored


ENDPOINT_DOWN = "endpoint_down"  # an endpoint refused so many connections in a row that it is no longer called


BUDGET = "budget"  # a call not started because the spending ceiling would be passed; never stored


UNSTORED = frozenset({SERVER_EXITED, ENDPOINT_DOWN, BUDGET})  # answers the runner leaves out, for --resume to redo


# error kinds that say the answer was never delivered: the server, network or account failed, not the model
_INFRA_KINDS = frozenset({
    "connection", "timeout", "truncated", "stream_error", "bad_response", "client_error", "logged_error",
    "http_401", "http_403", "http_404", "http_408", "http_409", "http_429", NO_ANSWER, SERVER_EXITED, ENDPOINT_DOWN,
})


def failure_kind(kind: Any) -> str:
    """The error kind of a failed answer as stored: `client_error` where none was recorded (NULL)."""
    return kind if isinstance(kind, str) else "client_error"


def is_infrastructure_error(kind: str | None) -> bool:
    """Whether a failed call's `error_kind` is an infrastructure failure (no answer was delivered: connection,
    timeout, cut stream, 5xx, 429 after retries, authentication or a missing model, or no response stored)
    rather than a quality failure of the model. Request errors (400, 413, 422: e.g. an input too long for the
    model) count as quality; `not_in_log` (a production log without the case) is neither: it has no answer
    to compare."""
    if kind is None:
        return False
    return kind in _INFRA_KINDS or kind.startswith("http_5")
