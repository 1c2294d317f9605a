"""What calls cost before they are made: input tokens counted, worst-case cost per call, and the spending ceiling.

`count_input_tokens` counts a request's input tokens the best way it can, and says which way: with the provider's
own tokenizer where one ships in a package (tiktoken, for OpenAI and Azure models, when its vocabulary file is at
hand), else a documented approximation. `worst_input_tokens` is a bound that holds for any byte-level BPE tokenizer
(every token covers at least one UTF-8 byte). `Ledger` is the run's spending ceiling: a call is started only when
its worst-case cost fits under the ceiling with what has been spent and what is in flight; `Spend` is one provider's
view of it (its price and output bound), which `Resilient` asks before every attempt.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from harness.pricing import Price
from harness.providers.base import Completion, Request

# Approximation where no tokenizer is at hand: characters per token of English prose and JSON under the BPE
# vocabularies of the API models (OpenAI's guidance is "about 4 characters"; Anthropic's tokenizer runs a little
# denser), plus what the chat format adds per message and per request.
CHARS_PER_TOKEN = {"anthropic": 3.5}
DEFAULT_CHARS_PER_TOKEN = 4.0
PER_MESSAGE_TOKENS = 4
PER_REQUEST_TOKENS = 3
# kinds billed per token by an API; local, vllm and log answers cost no API money
BILLED_KINDS = frozenset({"openai", "anthropic", "azure", "openai-compatible"})
TIKTOKEN_KINDS = frozenset({"openai", "azure"})


@dataclass(frozen=True)
class TokenCount:
    """Input tokens of one request and how they were counted: `method` is "tiktoken <encoding>" (exact),
    "calibrated" (characters times the tokens per character this provider was billed for before) or
    "approximate" (characters / 4, with why where a tokenizer was expected)."""

    tokens: int
    method: str

    @property
    def exact(self) -> bool:
        """Whether the count came from the provider's own tokenizer."""
        return self.method.startswith("tiktoken")


def message_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of the messages' text (content only), the quantity approximations and calibration scale."""
    return sum(len(_content(m)) for m in messages)


def count_input_tokens(
    kind: str, model: str, messages: list[dict[str, Any]], tokens_per_char: float | None = None
) -> TokenCount:
    """The input tokens of a chat request of `messages` to `kind:model`.

    tiktoken's encoding for the model where the provider is OpenAI's (or Azure's) and the vocabulary loads (it is
    fetched once and cached by tiktoken; offline and uncached it is not), with OpenAI's chat overhead of 3 tokens a
    message and 3 a request; else `tokens_per_char` (measured from earlier billed answers) times the characters;
    else the characters divided by 4 (3.5 for Anthropic), plus the same overhead.
    """
    encoding = _encoding(model) if kind in TIKTOKEN_KINDS else None
    overhead = PER_MESSAGE_TOKENS * len(messages) + PER_REQUEST_TOKENS
    if encoding is not None:
        body = sum(len(encoding.encode(_content(m), disallowed_special=())) + len(encoding.encode(m.get("role", "")))
                   for m in messages)
        return TokenCount(body + 3 * len(messages) + 3, f"tiktoken {encoding.name}")
    chars = message_chars(messages)
    if tokens_per_char is not None:
        return TokenCount(math.ceil(chars * tokens_per_char) + overhead, "calibrated")
    per = CHARS_PER_TOKEN.get(kind, DEFAULT_CHARS_PER_TOKEN)
    why = ": tiktoken could not load its vocabulary (offline, not cached)" if kind in TIKTOKEN_KINDS else ""
    return TokenCount(math.ceil(chars / per) + overhead, f"approximate{why}")


def worst_input_tokens(messages: list[dict[str, Any]]) -> int:
    """An upper bound on the input tokens of `messages` under any byte-level BPE tokenizer (each token is at least
    one UTF-8 byte), plus a generous chat-format overhead: what a spending ceiling may rely on."""
    body = sum(len(_content(m).encode("utf-8")) + len(str(m.get("role", ""))) for m in messages)
    return body + 8 * len(messages) + 16


def _content(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


@lru_cache(maxsize=32)
def _encoding(model: str) -> Any:
    """tiktoken's encoding for `model`, or None when tiktoken does not know the model or cannot load its
    vocabulary (offline with an empty cache). `SHADOW_NO_TIKTOKEN=1` turns it off."""
    if os.environ.get("SHADOW_NO_TIKTOKEN"):
        return None
    try:
        import tiktoken  # imported here: it is needed only to count tokens before a paid run
    except ImportError:
        return None
    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:
        return None
    except Exception:  # the vocabulary could not be fetched (no network) or read
        return None


@dataclass
class Ledger:
    """A run's spending ceiling in USD. `spent`: billed so far (earlier invocations included); `in_flight`: the
    worst-case cost of the calls under way. `reserve` refuses a call whose worst case would take spent + in flight
    past the ceiling; from the first refusal on, every call is refused (`reached`), so the run stops cleanly."""

    ceiling: float
    spent: float = 0.0
    in_flight: float = 0.0
    reached: bool = False
    refused_worst: float | None = None  # the worst-case cost of the first call refused
    unpriced_calls: int = 0  # calls whose cost could not be known (no usage reported): counted at their worst case

    def reserve(self, worst: float) -> bool:
        """Book `worst` USD for a call about to start, or refuse it (and every later call)."""
        if self.reached or self.spent + self.in_flight + worst > self.ceiling + 1e-12:
            if not self.reached:
                self.reached, self.refused_worst = True, worst
            return False
        self.in_flight += worst
        return True

    def settle(self, worst: float, billed: float) -> None:
        """A call booked at `worst` has ended and was billed `billed` USD."""
        self.in_flight = max(0.0, self.in_flight - worst)
        self.spent += billed

    @property
    def left(self) -> float:
        """USD under the ceiling not yet spent or booked."""
        return max(0.0, self.ceiling - self.spent - self.in_flight)


@dataclass
class Spend:
    """One provider's calls against a `Ledger`: its price, and the output tokens a call may produce at most."""

    ledger: Ledger
    price: Price | None  # None: a provider the ceiling does not count (self-hosted, or --allow-unpriced)
    max_output_tokens: int
    booked: dict[int, float] = field(default_factory=dict)

    def worst(self, request: Request) -> float:
        """USD of `request` if every input token is uncached and the answer runs to `max_output_tokens`."""
        if self.price is None:
            return 0.0
        return self.price.cost(worst_input_tokens(request.messages), self.max_output_tokens) or 0.0

    def billed(self, completion: Completion, worst: float) -> float:
        """What the attempt that produced `completion` was billed: its reported usage at the price; nothing for a
        failed attempt with no usage (rejected, refused, cut before any usage was sent); its worst case for an
        answer that reported no usage, as the ceiling cannot know better."""
        if self.price is None:
            return 0.0
        cost = self.price.cost(completion.input_tokens, completion.output_tokens,
                               completion.cached_input_tokens, completion.cache_write_tokens)
        if cost is not None:
            return cost
        if completion.error:
            return 0.0
        self.ledger.unpriced_calls += 1
        return worst
