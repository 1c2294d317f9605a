"""Total cost of ownership per workload: the API against serving the candidate yourself, from a run's measurements.

The model, per month at a volume of V cases (all amounts USD):

    api(V)         = V x c                       c: the API provider's measured cost per case (tokens x prices)
    replicas(V)    = max(min_replicas, ceil(V x s / C))
                     s: model calls per case (1; for a hybrid routing on agreement, 1 + extra samples),
                     C: cases one replica serves a
                     month = throughput x target_utilization x 3600 x hours_per_month
    self_hosted(V) = F + replicas(V) x R         R = gpu_hour_usd x gpus_per_replica x hours_per_month
                                                 F = storage + networking + FTE x salary / 12 + fine-tunes / 12
    hybrid(V)      = self_hosted(V) + V x h      h: API cost per case of the cases a cascade routes to the API

The break-even volume is where self-hosting becomes cheaper and stays cheaper at every larger volume.
`self_hosted` is a staircase (one step a replica) and `api` a line through 0, so when one replica's capacity
costs more on the API than the replica (c x C > R) there is a closed form: past step K =
max(min_replicas + 1, ceil((F + cC) / (cC - R))) self-hosting is cheaper on whole steps, and the break-even lies
on step K - 1 at (F + (K - 1) R) / c, or at the step's end. Otherwise self-hosting never breaks even.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis.outcomes import run_providers
from harness.errors import CostError
from harness.pricing import PricingTable, load_pricing
from harness.store.db import Store
from harness.store.queries import latest_load
from harness.suite.profile import Profile

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class CostModel:
    """The monthly cost functions of one workload (see the module doc for the formulas)."""

    api_cost_per_case: float  # c
    replica_monthly: float  # R
    fixed_monthly: float  # F
    cases_per_replica_month: float  # C
    calls_per_case: float = 1.0  # s
    min_replicas: int = 1

    def api(self, volume: float) -> float:
        """USD a month on the API at `volume` cases a month."""
        return volume * self.api_cost_per_case

    def replicas(self, volume: float) -> int:
        """Replicas needed for `volume` cases a month."""
        needed = math.ceil(volume * self.calls_per_case / self.cases_per_replica_month - 1e-9) if volume > 0 else 0
        return max(self.min_replicas, needed)

    def self_hosted(self, volume: float) -> float:
        """USD a month serving the candidate yourself at `volume` cases a month."""
        return self.fixed_monthly + self.replicas(volume) * self.replica_monthly

    def hybrid(self, volume: float, routed_cost_per_case: float) -> float:
        """USD a month for the cascade: the candidate answers every case, the API the routed ones."""
        return self.self_hosted(volume) + volume * routed_cost_per_case

    def break_even(self) -> float | None:
        """The volume (whole cases a month) from which self-hosting is cheaper at every larger volume; None if never."""
        c, cap, r, f = self.api_cost_per_case, self.cases_per_replica_month / self.calls_per_case, \
            self.replica_monthly, self.fixed_monthly
        if c <= 0 or c * cap <= r:
            return None
        k = max(self.min_replicas + 1, math.ceil((f + c * cap) / (c * cap - r) - 1e-12))
        below = k - 1  # the step before the first whole step on which self-hosting is cheaper
        crossing = (f + below * r) / c
        return float(math.ceil(min(crossing, below * cap) - 1e-6))  # a whole number of cases


@dataclass
class Measured:
    """What the cost model takes from the stored run (and load tests), with where each figure came from."""

    run_id: str
    candidate: str
    api_provider: str
    api_cost_per_case: float
    api_tokens_per_case: float | None
    api_price_source: str
    candidate_output_tokens_per_case: float | None
    calls_per_case: float
    throughput_cases_per_s: float
    throughput_source: str
    candidate_latency_p95_ms: float | None
    candidate_latency_source: str
    api_latency_p95_ms: float | None
    api_latency_source: str = ""
    warnings: list[str] = field(default_factory=list)


def measure(
    store: Store, run_id: str, profile: Profile, *, candidate: str | None = None, pricing: PricingTable | None = None
) -> Measured:
    """Collect the run's measurements the cost model needs. Raises CostError when a needed figure is missing."""
    who = run_providers(store, run_id)
    candidate = who.candidate(candidate)
    providers = store.table("run_providers", run_id)
    roles = {p: who.roles[p] for p in who.ready}
    everyone = dict(zip(providers["provider"], providers["role"], strict=True))
    api = profile.api.provider or next((p for p, role in everyone.items() if role == "incumbent"), None)
    if api is None:
        raise CostError(f"run {run_id} has no incumbent to price the API option with; name an API model in "
                        f"{profile.source or 'the profile'}: [api] provider = \"openai:gpt-4o-mini\"")
    responses = store.table("responses", run_id)
    answered = responses[responses["error"].isna()]
    mine = answered[answered["provider"] == candidate]
    warnings: list[str] = []
    if api in roles and (answered["provider"] == api).any():
        theirs = answered[answered["provider"] == api]
        model = providers.loc[providers["provider"] == api, "model"].iloc[0]
        cost, price_source = _api_cost_per_case(theirs, api, model, pricing)
    else:
        # The API did not answer in this run (no key, or a model it never ran): price the candidate's own
        # token counts at its rates. Tokenizers differ, so this is an estimate, and said so.
        theirs = mine.iloc[0:0]
        model = (providers.loc[providers["provider"] == api, "model"].iloc[0] if api in everyone
                 else api.partition(":")[2])
        cost, price_source = _api_cost_per_case(mine, api, model, pricing, stored=False)
        why = ("did not run in this run" if api not in everyone else "answered no case in this run"
               if api in roles else "was skipped in this run")
        warnings.append(f"{api} {why}: its cost per case is estimated from {candidate}'s token counts at its "
                        "prices (tokenizers differ); run it for a measured figure")
        price_source = f"estimated: {price_source}, on {candidate}'s tokens"
    basis = theirs if len(theirs) else mine
    tokens = (basis["input_tokens"] + basis["output_tokens"]).dropna()
    out_tokens = mine["output_tokens"].dropna()
    extra = mine["samples"].fillna(0) if "samples" in mine else pd.Series(dtype=float)
    calls = 1.0 + (float(extra.mean()) if len(extra) else 0.0)

    live = mine[~mine["cached"].fillna(False).astype(bool)]
    if live.empty and len(mine):
        # every answer replayed from the cache: their latencies are those measured when they were first asked
        live = mine
        warnings.append(f"every answer of {candidate} in this run came from the cache: its latencies are those of "
                        f"the runs they were first asked in ({', '.join(sorted(set(mine['cached_from'].dropna())))})")
    run = store.run(run_id)
    load = latest_load(store, str(run["suite"]), candidate)
    if load is not None and load.get("suite_hash") != run.get("suite_hash"):
        warnings.append(f"load test {load['load_id']} is of another version of the suite: not used")
        load = None
    throughput, source = _throughput(profile, load, live, providers, candidate, out_tokens, warnings)
    if load is not None and load.get("latency_p95_ms") is not None:
        latency, latency_source = float(load["latency_p95_ms"]), f"load test {load['load_id']}"
    else:
        latency = _p95(live["latency_ms"])
        latency_source = f"run {run_id} ({len(live)} calls)"
    api_live = theirs[~theirs["cached"].fillna(False).astype(bool)]
    if api_live.empty:
        api_live = theirs
    return Measured(
        run_id=run_id, candidate=candidate, api_provider=api, api_cost_per_case=cost,
        api_tokens_per_case=float(tokens.mean()) if len(tokens) else None, api_price_source=price_source,
        candidate_output_tokens_per_case=float(out_tokens.mean()) if len(out_tokens) else None,
        calls_per_case=calls, throughput_cases_per_s=throughput, throughput_source=source,
        candidate_latency_p95_ms=latency, candidate_latency_source=latency_source,
        api_latency_p95_ms=_p95(api_live["latency_ms"]),
        api_latency_source=f"run {run_id} ({len(api_live)} calls)" if len(api_live) else "not measured",
        warnings=warnings,
    )


def cost_model(profile: Profile, measured: Measured, calls_per_case: float = 1.0) -> CostModel:
    """The monthly cost functions for `profile` with the run's measurements, serving `calls_per_case` model calls
    a case (1; more for a hybrid that routes on the agreement of extra samples)."""
    s = profile.self_hosted
    return CostModel(
        api_cost_per_case=measured.api_cost_per_case,
        replica_monthly=s.gpu_hour_usd * s.gpus_per_replica * s.hours_per_month,
        fixed_monthly=s.fixed_monthly,
        cases_per_replica_month=measured.throughput_cases_per_s * s.target_utilization * SECONDS_PER_HOUR
        * s.hours_per_month,
        calls_per_case=calls_per_case,
        min_replicas=s.min_replicas,
    )


def estimate(
    model: CostModel, volume: float, routed_cost_per_case: float | None = None, hybrid_model: CostModel | None = None
) -> dict[str, Any]:
    """Monthly cost and cost per 1,000 cases of each option at `volume` cases a month (the hybrid's self-hosted
    part from `hybrid_model` when it serves more calls a case, e.g. extra samples)."""
    options = {"api": model.api(volume), "self_hosted": model.self_hosted(volume)}
    if routed_cost_per_case is not None:
        options["hybrid"] = (hybrid_model or model).hybrid(volume, routed_cost_per_case)
    return {
        "volume": volume,
        "replicas": model.replicas(volume),
        "monthly": options,
        "per_1k": {name: usd / volume * 1000 if volume else None for name, usd in options.items()},
        "cheapest": min(options, key=options.__getitem__),
    }


def curve(model: CostModel, volume: float, routed_cost_per_case: float | None = None,
          points: int = 200) -> dict[str, np.ndarray]:
    """Monthly cost of each option over volumes from volume/100 to volume x 100 (and past the break-even),
    log-spaced, with each replica step's edges included so the staircase is drawn as it is."""
    be = model.break_even()
    lo = volume / 100
    hi = max(volume * 100, (be or 0) * 3)
    volumes = np.geomspace(lo, hi, points)
    step = model.cases_per_replica_month / model.calls_per_case
    edges = np.arange(1, int(hi / step) + 1) * step if hi / step < 500 else np.array([])
    volumes = np.unique(np.concatenate([volumes, edges[edges >= lo], edges[edges >= lo] * (1 + 1e-9)]))
    out = {
        "volume": volumes,
        "api": volumes * model.api_cost_per_case,
        "self_hosted": np.array([model.self_hosted(v) for v in volumes]),
    }
    if routed_cost_per_case is not None:
        out["hybrid"] = out["self_hosted"] + volumes * routed_cost_per_case
    return out


def _api_cost_per_case(
    answers: pd.DataFrame, api: str, model: str, pricing: PricingTable | None, *, stored: bool = True
) -> tuple[float, str]:
    """The mean USD per answered case: the run's stored costs (`stored`), else `answers`' token counts at the
    current table's prices for `model` (e.g. the price was added after the run, or the API did not run)."""
    if answers.empty:
        raise CostError(f"'{api}' answered no case in this run: nothing to price the API option with")
    known = answers["cost_usd"].dropna() if stored else pd.Series(dtype=float)
    if len(known):
        return float(known.mean()), f"prices stored with the run ({len(known)} answers)"
    table = pricing or load_pricing()
    costs = []
    for row in answers.itertuples():
        price = table.lookup(model, provider_id=api, answered_model=row.model if stored else None)
        value = None if price is None else price.cost(_count(row.input_tokens), _count(row.output_tokens),
                                                       _int(row.cached_input_tokens), _int(row.cache_write_tokens))
        if value is not None:
            costs.append(value)
    if not costs:
        raise CostError(f"no price for '{api}' (or no token counts): add it to a pricing override file and pass "
                        "--pricing FILE (see harness/pricing.toml for the format)")
    return float(np.mean(costs)), f"pricing table {table.version} ({len(costs)} answers)"


def _throughput(
    profile: Profile, load: dict[str, Any] | None, live: pd.DataFrame, providers: pd.DataFrame, candidate: str,
    out_tokens: pd.Series, warnings: list[str],
) -> tuple[float, str]:
    """Cases per second one replica serves, and where the figure came from."""
    s = profile.self_hosted
    if s.throughput_cases_per_s is not None:
        return s.throughput_cases_per_s, f"entered for {s.gpu}"
    if s.throughput_output_tokens_per_s is not None:
        if not len(out_tokens) or out_tokens.mean() <= 0:
            raise CostError(f"{profile.source}: self_hosted.throughput_output_tokens_per_s needs the candidate's "
                            "output tokens per case, and the run has none; give throughput_cases_per_s")
        per_case = float(out_tokens.mean())
        return (s.throughput_output_tokens_per_s / per_case,
                f"entered for {s.gpu}: {s.throughput_output_tokens_per_s:g} output tokens/s ÷ {per_case:.0f} a case")
    if load is not None and load.get("requests_per_s"):
        host = load.get("host") if isinstance(load.get("host"), dict) else {}
        where = f"load test {load['load_id']} at concurrency {load['concurrency']}"
        if not host.get("gpus"):
            seen = "on a host with no GPU" if host.get("server_on_this_host", True) else "against a remote server"
            warnings.append(f"throughput was measured {seen} ({where}); if that is not the target GPU, enter "
                            f"self_hosted.throughput_cases_per_s for the {s.gpu} in {profile.source or 'the profile'}")
        return float(load["requests_per_s"]), f"measured: {where}"
    latencies = live["latency_ms"].dropna()
    if latencies.empty or latencies.mean() <= 0:
        raise CostError(f"no throughput for '{candidate}': run `harness load` on it, or enter "
                        f"self_hosted.throughput_cases_per_s in {profile.source or 'the profile'}")
    concurrency = providers.loc[providers["provider"] == candidate, "concurrency"].iloc[0]
    concurrency = int(concurrency) if pd.notna(concurrency) else 1
    rate = concurrency / (float(latencies.mean()) / 1000)
    warnings.append(f"throughput estimated from the run ({concurrency} in flight / mean latency "
                    f"{latencies.mean():,.0f} ms), not measured under load: run `harness load` or enter "
                    "self_hosted.throughput_cases_per_s")
    return rate, f"estimated from the run: concurrency {concurrency} / mean latency"


def _p95(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(np.percentile(values, 95)) if len(values) else None


def _count(value: Any) -> int | None:
    """A token count, None when unknown (a log line without usage)."""
    return None if value is None or pd.isna(value) else int(value)


def _int(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)
