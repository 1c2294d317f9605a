"""The schema of suite.toml, as pydantic models: every table and key, their types (strict: `"200"` is not a
number) and defaults. `load_suite` (harness.suite.load) validates a suite against it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FieldType = Literal["text", "amount", "date", "exact"]
ScorerKind = Literal["fields", "exact", "label", "line_items", "clauses", "python", "agreement", "pairwise", "rubric",
                     "reference"]
# reference-based measures of a free-text answer (`reference` scorer): normalised exact match, ROUGE-1 F (token
# F1) and ROUGE-L F, both from Google's rouge-score package
ReferenceMeasure = Literal["exact", "token_f1", "rouge_l"]


class _Strict(BaseModel):
    # strict: a value of the wrong TOML type is refused, not converted (max_tokens = "200" is a string, not 200)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class CasesSpec(_Strict):
    """Where the cases come from and which fields carry the id and the gold answer."""

    source: str = "cases.jsonl"
    split: str = "train"
    id_field: str = "id"
    gold_field: str = "gold"
    # cases a run takes when no --limit/--all is given: the first N in file order (None: every case)
    default_limit: int | None = Field(default=None, ge=1)


class PromptSpec(_Strict):
    """The user message is `template` rendered with each case's fields; `system` is sent as is."""

    template: str = "prompt.j2"
    system: str | None = None
    vars: dict[str, Any] = {}  # extra template variables, the same for every case (e.g. the categories asked)
    # the case field holding each case's chat messages ([{"role", "content"}, ...]), sent as they are: the
    # template and `system` are then not used (captured traffic: `harness proxy export`)
    messages_field: str | None = None


class ContextSpec(_Strict):
    """Long inputs cut to fit the model's context, explicitly and recorded per case.

    `field`: the case field that can be long; `max_chars`: the most characters of it the prompt gets;
    `strategy`: `head` keeps the beginning, `head_tail` the first two thirds and the last third of the budget,
    `fail` refuses a suite with a longer input (so nothing is ever cut silently)."""

    field: str
    max_chars: int = Field(ge=200)
    strategy: Literal["head", "head_tail", "fail"] = "head"


class OutputSpec(_Strict):
    """What the model must answer: JSON (validated against `schema` when given) or free text."""

    format: Literal["json", "text"] = "json"
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: str | None = None
    # classification: the label set, inline or in a JSON file (a list of strings); the template sees `labels`
    labels: list[str] | None = None
    labels_file: str | None = None
    label_key: str = "label"  # the JSON key holding the label (format = "json")


# the keys each kind of scorer takes besides kind and name
SCORER_KEYS: dict[str, set[str]] = {
    "fields": {"fields", "dayfirst", "gold_in_input_field"},
    "exact": set(),
    "label": set(),
    "line_items": {"key", "item_fields", "min_similarity", "dayfirst"},
    "clauses": {"categories", "text_field"},
    "python": {"function", "threshold", "options"},
    "agreement": set(),
    "pairwise": {"judge", "rubric", "judge_max_tokens"},
    "rubric": {"judge", "rubric", "scale", "criteria", "pass_score", "judge_max_tokens"},
    "reference": {"measure", "threshold"},
}

# judge scorers: a judge model reads the answers (after every provider has answered), not the scorer itself
JUDGE_KINDS = ("pairwise", "rubric")


class ScorerSpec(_Strict):
    """One scorer: `kind` and the keys that kind takes (see suites/README.md)."""

    kind: ScorerKind
    name: str | None = None  # how its scores are labelled; defaults to the kind
    fields: dict[str, FieldType] = {}  # fields: gold field -> how it is compared
    dayfirst: bool = True  # fields, line_items: 01/02/2019 is the 1st of February
    # fields: a case field mapping each gold field to whether its gold value occurs in the input; fields whose
    # gold is not in the input (annotation slips) are then also reported apart
    gold_in_input_field: str | None = None
    key: str = "line_items"  # line_items: the gold and answer key holding the list of items
    item_fields: dict[str, FieldType] = {"name": "text", "quantity": "amount", "price": "amount"}
    min_similarity: float = Field(default=0.5, ge=0, le=1)  # line_items: name similarity for a match
    categories: list[str] | None = None  # clauses: defaults to prompt.vars.categories, else a dozen common ones
    text_field: str = "text"  # clauses: the case field holding the contract
    function: str | None = None  # python: "module:function", the module looked up in the suite folder first
    threshold: float | None = None  # python: a number returned passes at or above this
    options: dict[str, Any] = {}  # python: keyword arguments for the function
    # pairwise, rubric: the judge, a provider id, or a list of them of which the first that can run is used
    # (e.g. an API judge when its key is set, else the bundled model)
    judge: list[str] = []
    rubric: str | None = None  # pairwise, rubric: the judge's instructions, a Jinja template in the suite folder
    scale: int = Field(default=5, ge=2, le=10)  # rubric: scores run from 1 to `scale`
    criteria: list[str] = []  # rubric: criteria the judge marks met or not, each reported apart
    pass_score: float | None = None  # rubric: an answer passes at or above this score (default: 4 of 5, 8 of 10...)
    judge_max_tokens: int = Field(default=200, ge=8, le=8192)  # pairwise, rubric: the most the judge may write
    measure: ReferenceMeasure = "rouge_l"  # reference: the measure that decides a case (with `threshold`)

    @model_validator(mode="before")
    @classmethod
    def _keys_of_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("judge"), str):
            data = {**data, "judge": [data["judge"]]}
        if isinstance(data, dict) and data.get("kind") in SCORER_KEYS:
            allowed = SCORER_KEYS[data["kind"]] | {"kind", "name"}
            for key in data:
                if key not in allowed:
                    takes = ", ".join(sorted(SCORER_KEYS[data["kind"]])) or "no other keys"
                    raise ValueError(f"a '{data['kind']}' scorer does not take '{key}' (it takes {takes})")
        return data

    @model_validator(mode="after")
    def _complete(self) -> ScorerSpec:
        if self.kind == "fields" and not self.fields:
            raise ValueError("a 'fields' scorer needs [scorers.fields], e.g. total = \"amount\"")
        if self.kind == "python" and (not self.function or ":" not in self.function):
            raise ValueError("a 'python' scorer needs function = \"module:function\", e.g. \"checks:has_total\"")
        if self.kind == "line_items" and "name" not in self.item_fields:
            raise ValueError("item_fields must include 'name', the field items are matched on")
        if self.kind in JUDGE_KINDS:
            if not self.judge:
                raise ValueError(f"a '{self.kind}' scorer needs judge = \"kind:model\" (e.g. \"anthropic:"
                                 "claude-3-5-haiku-latest\"), or a list of them, the first that can run judging")
            if not self.rubric:
                raise ValueError(f"a '{self.kind}' scorer needs rubric = \"FILE.j2\", the judge's instructions "
                                 "(a Jinja template in the suite folder)")
            for judge in self.judge:
                kind, sep, model = judge.partition(":")
                if not sep or not model or kind not in PROVIDER_KINDS or kind == "log":
                    raise ValueError(f"judge {judge!r} must look like 'kind:model' with a kind of "
                                     f"{', '.join(k for k in PROVIDER_KINDS if k != 'log')}")
        if self.kind == "rubric":
            if self.pass_score is None:
                self.pass_score = float(max(2, round(self.scale * 0.8)))
            if not 1 <= self.pass_score <= self.scale:
                raise ValueError(f"pass_score {self.pass_score:g} is outside the scale 1 to {self.scale}")
        if self.kind == "reference" and self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold:g} must be between 0 and 1 for a 'reference' scorer")
        if self.name is None:
            self.name = self.kind
        return self


# the kinds a provider id `kind:model` may have (harness.providers builds each)
PROVIDER_KINDS = ("local", "vllm", "openai-compatible", "openai", "anthropic", "azure", "log")


# llama-cpp-python's server (`local`) computes logprobs by sorting the whole vocabulary in Python for every token,
# about as long as a small model takes to generate it: on request only, or the candidate's latency would lie
LOGPROBS_BY_DEFAULT = frozenset({"vllm", "openai-compatible"})


NO_LOGPROBS = {
    "anthropic": "the Anthropic Messages API returns none",
    "log": "a production log holds only the answers",
}


class ProviderSpec(_Strict):
    """A provider taking part in the run, named `kind:model`."""

    id: str
    role: Literal["incumbent", "candidate", "judge"]  # judge: made by the harness for a judge scorer's `judge`
    base_url: str | None = None
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    params: dict[str, Any] = {}
    omit: list[str] = []  # suite parameters not to send to this provider (e.g. temperature for o-series models)
    timeout: float | None = Field(default=None, gt=0)  # seconds per attempt, first byte to last token
    max_attempts: int | None = Field(default=None, ge=1, le=20)  # the first call included
    api_version: str | None = None  # Azure OpenAI API version
    # schema: the suite's output schema is sent (constrained decoding where the server has it); json: JSON mode
    # only; off: no response format. llama.cpp's grammar sampler is slow on large enums (77 labels: seconds a
    # token on a CPU), where "json" keeps a run short; vLLM's constrained decoding has no such cost.
    structured_output: Literal["schema", "json", "off"] = "schema"
    # token log-probabilities of each answer, a confidence signal; None: on for self-hosted candidates
    logprobs: bool | None = None
    samples: int = Field(default=1, ge=1, le=20)  # answers drawn per case; those past the first measure agreement
    sample_temperature: float = Field(default=0.7, ge=0, le=2)  # the temperature of the extra samples

    @field_validator("id")
    @classmethod
    def _kind_model(cls, value: str) -> str:
        kind, sep, model = value.partition(":")
        if not sep or not kind or not model:
            raise ValueError(f"provider id {value!r} must look like 'kind:model', e.g. 'openai:gpt-4o-mini'")
        return value

    @model_validator(mode="after")
    def _confidence_signals(self) -> ProviderSpec:
        kind = self.id.partition(":")[0]
        if self.logprobs and kind in NO_LOGPROBS:
            raise ValueError(f"provider '{self.id}' cannot give token log-probabilities ({NO_LOGPROBS[kind]}); "
                             "remove logprobs = true")
        if self.samples > 1 and kind == "log":
            raise ValueError(f"provider '{self.id}' replays one logged answer per case, so it cannot be sampled; "
                             "remove samples")
        return self

    @property
    def wants_logprobs(self) -> bool:
        """Whether this provider is asked for token log-probabilities: `logprobs`, else on for a candidate
        served over the OpenAI wire format by a server that gives them cheaply (vllm, openai-compatible)."""
        if self.logprobs is not None:
            return self.logprobs
        return self.role == "candidate" and self.id.partition(":")[0] in LOGPROBS_BY_DEFAULT


class ParamsSpec(_Strict):
    """Generation parameters sent to every provider (a provider's own `params` override them)."""

    temperature: float = 0.0
    max_tokens: int = Field(default=256, ge=1)
    seed: int | None = 0
    top_p: float | None = None


class GateSpec(_Strict):
    """`[gate]`: when a candidate may replace the incumbent (`harness gate`). Rates are fractions: 0.02 = 2 points."""

    metric: str = "pass_rate"  # pass_rate, or a per-case score metric such as "field.total" or "items.f1"
    margin: float = Field(default=0.02, ge=0, le=1)  # non-inferiority: the candidate may be this much worse
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_score: float | None = Field(default=None, ge=0, le=1)  # floor on the candidate's metric
    max_invalid_rate: float | None = Field(default=None, ge=0, le=1)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_latency_p95_ms: float | None = Field(default=None, gt=0)
    max_ttft_p95_ms: float | None = Field(default=None, gt=0)
    max_cost_per_1k: float | None = Field(default=None, ge=0)  # USD per 1,000 cases
    max_slice_drop: float | None = Field(default=None, ge=0, le=1)  # per field/label/clause: accuracy drop allowed
    # above this share of cases failing for infrastructure reasons (connection, timeout, 5xx...) a side makes the
    # run invalid: no verdict on quality
    max_infra_error_rate: float = Field(default=0.05, ge=0, le=1)
    # judge scorers: above this share of cases whose two pairwise orders disagree, the judge mostly reads positions
    # (its ties would pass anything): inconclusive. Above `max_infra_error_rate` of the candidate's answers left
    # unjudged (the judge failed or wrote no verdict), the run is invalid.
    max_judge_inconsistency: float = Field(default=0.5, ge=0, le=1)
    min_judge_kappa: float | None = Field(default=None, ge=-1, le=1)  # agreement with human labels required
    # resamples of the paired bootstrap the gate used before its score test; accepted so older suites load, unused
    bootstrap: int = Field(default=2000, ge=200, le=100_000)
    seed: int = 0  # of the cascade's cross-fitting folds


class BudgetSpec(_Strict):
    """`[budget]`: what a run of the suite may spend on paid APIs, in USD (`--max-cost` and `--confirm-above` on the
    command line override it)."""

    max_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # the hard ceiling of one run
    confirm_above: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # at a terminal, ask above this


class SuiteSpec(_Strict):
    """The validated contents of `suite.toml`."""

    name: str
    description: str = ""
    version: str = "1"
    # generation: free text, judged by a judge model (pairwise, rubric) and against a reference where cases have one
    task: Literal["extraction", "classification", "review", "traffic", "generation"]
    cases: CasesSpec = CasesSpec()
    prompt: PromptSpec = PromptSpec()
    context: ContextSpec | None = None
    output: OutputSpec = OutputSpec()
    scorers: list[ScorerSpec]
    providers: list[ProviderSpec]
    params: ParamsSpec = ParamsSpec()
    gate: GateSpec = GateSpec()
    budget: BudgetSpec = BudgetSpec()

    @field_validator("scorers")
    @classmethod
    def _scorer_names(cls, scorers: list[ScorerSpec]) -> list[ScorerSpec]:
        if not scorers:
            raise ValueError("name at least one scorer, e.g. [[scorers]] kind = \"fields\"")
        seen = set()
        for scorer in scorers:
            if scorer.name in seen:
                raise ValueError(f"two scorers are named '{scorer.name}'; give the second one name = \"...\"")
            seen.add(scorer.name)
        return scorers

    @field_validator("providers")
    @classmethod
    def _roles(cls, providers: list[ProviderSpec]) -> list[ProviderSpec]:
        if any(p.role == "judge" for p in providers):
            raise ValueError("role = 'judge' is not for [[providers]]: name a judge in its scorer, "
                             "judge = \"kind:model\"")
        ids = [p.id for p in providers]
        if len(set(ids)) != len(ids):
            raise ValueError("each provider id may appear once")
        if not any(p.role == "candidate" for p in providers):
            raise ValueError("name at least one provider with role = 'candidate'")
        if sum(p.role == "incumbent" for p in providers) > 1:
            raise ValueError("name at most one provider with role = 'incumbent'")
        return providers
