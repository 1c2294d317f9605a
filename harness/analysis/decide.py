"""Migrate, stay, hybrid or undecided: the per-workload decision, from a stored run, its load tests and the
workload profile.

Seven factors, each leaning toward the open model ("open"), the API ("api") or neither, with a weight (2 for a
factor that usually settles the question on its own) and the reason shown:

    factor             half        leans open when                     leans API when
    token volume       measured    self-hosting is cheaper at the      the API is cheaper (weight 2 when
                                   profile's volume                    either is 3x cheaper, 3 at 10x)
    data sensitivity   declared    confidential (1), regulated (2)     -
    latency            measured    only the candidate meets the p95    only the API meets it (2)
                                   requirement
    task complexity    measured    the candidate passes the gate's     it fails it (a quality gap the
                                   non-inferiority test                gate can see); neither when the
                                                                       gate is inconclusive or invalid
    team capability    declared    experienced (1)                     none (2)
    customisation      declared    fine_tuning (1)                     -
    iteration speed    declared    stable (1)                          weekly (1)

The recommendation follows the gate's verdict (`harness.gate`: pass, fail, inconclusive or invalid):
- migrate: the gate passes (quality, and the gate's floors), and the other six factors' weighted sum leans
  toward the open model (above 0; a tie stays). Never on an inconclusive or invalid gate;
- hybrid: the gate fails only on checks routing can mend (non-inferiority, min score, invalid-output and error
  rates, slices; not latency or cost ceilings), or is inconclusive, and the cascade (`harness.cascade`) holds on
  cases its threshold was not chosen on: the cross-fitted hybrid passes the paired score test within the margin
  and enough folds found a threshold (`CrossFit.holds`), the threshold picked on all cases routes some but not
  every case, the hybrid costs less a month than the API at the cross-fitted API spend, and the team is not
  "none";
- undecided: the evidence cannot support a recommendation: the run is invalid (a side failed for infrastructure
  reasons; the reason is the gate's), or the gate is inconclusive and no hybrid holds (the reason says how many
  paired cases would settle it), or the gate fails and the cross-fitted hybrid is too thin to judge (inconclusive,
  with the cases it would need, or a fold found no threshold on its other folds);
- stay: otherwise (the gate fails and no threshold keeps quality, the cross-fitted hybrid fails, or the hybrid
  costs more or the team cannot run it; or the gate passes and the factors do not lean open). The reason names
  the factor that decided.

The hybrid's quality, routed share and savings quoted anywhere (the reason, `cost_text`, `decision_text`, the
report) are the cross-fitted ones with their 95% intervals; the threshold to deploy is the one picked on all cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import cascade, paired
from harness.analysis.cost import CostModel, Measured, cost_model, estimate, measure
from harness.analysis.gate import FAIL, INCONCLUSIVE, INVALID, PASS, GateResult
from harness.analysis.judging import judge_summaries
from harness.analysis.verdict import gate_run
from harness.errors import HarnessError
from harness.pricing import PricingTable
from harness.store import queries
from harness.store.db import Store
from harness.suite.profile import Profile
from harness.suite.spec import GateSpec

HEAVY = 2
RATIO_HEAVY = 3.0  # one option this many times cheaper makes the volume factor weigh 2
RATIO_DECISIVE = 10.0  # ... and this many times, 3


@dataclass
class Factor:
    """One row of the decision matrix."""

    name: str
    half: str  # measured or declared
    value: str
    leans: str  # open, api or neutral
    weight: int
    reason: str


@dataclass
class Analysis:
    """Everything behind `harness cost` and `harness decide` for one run: inputs, costs, cascade, decision."""

    run_id: str
    suite: str
    profile: Profile
    measured: Measured
    model: CostModel
    volume: float
    costs: dict[str, Any]
    break_even: float | None
    gate: GateResult | None
    gate_error: str | None
    cascade_signal: str | None
    cascade_curve: pd.DataFrame | None
    cascade_pick: dict[str, Any] | None
    cascade_error: str | None
    cascade_crossfit: cascade.CrossFit | None = None
    hybrid_api_cost_per_case: float | None = None  # USD over all cases, of the cross-fitted routing
    hybrid_interval: tuple[float, float] | None = None  # monthly USD at the ends of that spend's 95% interval
    factors: list[Factor] = field(default_factory=list)
    # the judges' cost per 1,000 cases of the shadow run (None: a judge had no price), apart from serving
    judge_cost_per_1k: dict[str, float | None] = field(default_factory=dict)
    decision: str = "stay"
    reason: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        curve = None if self.cascade_curve is None else self.cascade_curve.replace(
            [float("inf"), float("-inf")], None).astype(object).where(self.cascade_curve.notna(), None)
        return {
            "run_id": self.run_id, "suite": self.suite, "profile": self.profile.source,
            "assumptions": dict(self.profile.assumptions()),
            "measured": {k: v for k, v in vars(self.measured).items() if k != "warnings"},
            "volume": self.volume, "costs": self.costs, "break_even_cases_per_month": self.break_even,
            "gate": None if self.gate is None else self.gate.to_dict(), "gate_error": self.gate_error,
            "cascade": {"signal": self.cascade_signal, "error": self.cascade_error,
                        "recommended": None if self.cascade_pick is None else {
                            k: _json_number(v) for k, v in self.cascade_pick.items()},
                        "crossfit": None if self.cascade_crossfit is None else self.cascade_crossfit.to_dict(),
                        "hybrid_monthly_interval": None if self.hybrid_interval is None else list(
                            self.hybrid_interval),
                        "curve": None if curve is None else curve.to_dict(orient="records")},
            "factors": [vars(f) for f in self.factors],
            "judge_cost_per_1k": self.judge_cost_per_1k,
            "decision": self.decision, "reason": self.reason, "warnings": self.warnings,
        }


def analyse(
    store: Store, run_id: str, profile: Profile, policy: GateSpec, *, candidate: str | None = None,
    pricing: PricingTable | None = None, volume: float | None = None,
) -> Analysis:
    """Cost, cascade and decision for stored run `run_id` under `profile` and the suite's gate `policy`."""
    measured = measure(store, run_id, profile, candidate=candidate, pricing=pricing)
    volume = volume if volume is not None else profile.volume.monthly
    if not math.isfinite(volume) or volume <= 0:
        raise HarnessError(f"volume must be a number of cases a month above 0, not {volume:g}")
    model = cost_model(profile, measured)  # one call a case: what a migrated deployment serves

    gate, gate_error = None, None
    try:
        gate = gate_run(store, run_id, policy, candidate=measured.candidate)  # the suite's own gate, untouched
    except HarnessError as exc:
        gate_error = str(exc)

    margin = profile.cascade.margin if profile.cascade.margin is not None else policy.margin
    signal = curve = pick = cross = None
    cascade_error = None
    try:
        frame = cascade.cascade_frame(store, run_id, candidate=measured.candidate, incumbent=measured.api_provider,
                                      metric=policy.metric)
        signal = cascade.choose_signal(frame, profile.cascade.signal)
        cascade_policy = policy.model_copy(update={"margin": margin})
        curve = cascade.sweep(frame, signal, cascade_policy)
        pick = cascade.recommend(curve)
        cross = cascade.crossfit(frame, signal, cascade_policy)
    except HarnessError as exc:
        cascade_error = str(exc)

    # the hybrid draws its extra samples only when it routes on their agreement
    hybrid_model = cost_model(profile, measured, measured.calls_per_case) if signal == "agreement" else model
    routed = _routed_cost(pick, cross, measured)
    costs = estimate(model, volume, None if routed is None else routed[0], hybrid_model)
    interval = None if routed is None else (hybrid_model.hybrid(volume, routed[1]),
                                            hybrid_model.hybrid(volume, routed[2]))
    analysis = Analysis(
        run_id=run_id, suite=str(store.run(run_id)["suite"]), profile=profile, measured=measured, model=model,
        volume=volume, costs=costs, break_even=model.break_even(), gate=gate, gate_error=gate_error,
        cascade_signal=signal, cascade_curve=curve, cascade_pick=pick, cascade_error=cascade_error,
        cascade_crossfit=cross, hybrid_api_cost_per_case=None if routed is None else routed[0],
        hybrid_interval=interval, warnings=list(measured.warnings),
    )
    analysis.judge_cost_per_1k = judge_costs(store, run_id)
    analysis.factors = factors(analysis)
    analysis.decision, analysis.reason = recommend(analysis)
    return analysis


def judge_costs(store: Store, run_id: str) -> dict[str, float | None]:
    """Judge scorer -> what its judge cost per 1,000 cases of run `run_id` (every call at its price, those the
    cache answered included: what a fresh run pays); None when the judge has no price."""
    n_cases = max(1, queries.count_cases(store, run_id))
    return {s.scorer: None if s.cost_usd is None else 1000 * s.cost_usd / n_cases
            for s in judge_summaries(store, run_id)}


def factors(a: Analysis) -> list[Factor]:
    """The seven rows of the decision matrix (see the module doc)."""
    req = a.profile.requirements
    api_usd, self_usd = a.costs["monthly"]["api"], a.costs["monthly"]["self_hosted"]
    be = f"break-even {a.break_even:,.0f} cases/month" if a.break_even is not None else "self-hosting never breaks even"
    tokens = (f"{a.volume * a.measured.api_tokens_per_case / 1e6:,.1f}M API tokens/month"
              if a.measured.api_tokens_per_case else f"{a.volume:,.0f} cases/month")
    cheaper = "open" if self_usd < api_usd else "api"
    ratio = max(api_usd, self_usd) / max(min(api_usd, self_usd), 1e-12)
    weight = 3 if ratio >= RATIO_DECISIVE else HEAVY if ratio >= RATIO_HEAVY else 1
    rows = [Factor(
        "token volume", "measured", tokens, cheaper, weight,
        f"${self_usd:,.0f}/month self-hosted vs ${api_usd:,.0f} on the API at {a.volume:,.0f} cases/month; {be}",
    )]
    sensitivity = {"regulated": ("open", HEAVY, "regulated data may not leave your network: an API needs a "
                                 "contract and region that allow it"),
                   "confidential": ("open", 1, "confidential data: keeping it in-house removes a processor"),
                   }.get(req.data_sensitivity, ("neutral", 0, "no constraint on where the data goes"))
    rows.append(Factor("data sensitivity", "declared", req.data_sensitivity, *sensitivity))
    rows.append(_latency_factor(a))
    rows.append(_quality_factor(a))
    team = {"none": ("api", HEAVY, "nobody to run GPU serving: an API needs no one on call"),
            "experienced": ("open", 1, "the team runs its own inference already")
            }.get(req.team, ("neutral", 0, "can run a managed endpoint"))
    rows.append(Factor("team capability", "declared", req.team, *team))
    custom = ("open", 1, "the task needs its own weights: only an open model can be fine-tuned freely") \
        if req.customisation == "fine_tuning" else ("neutral", 0, "prompting is enough, on either side")
    rows.append(Factor("customisation", "declared", req.customisation, *custom))
    iteration = {"weekly": ("api", 1, "weekly changes: each means re-validating (and maybe re-tuning) the open model"),
                 "stable": ("open", 1, "a stable task: validate once, serve for long")
                 }.get(req.iteration, ("neutral", 0, "monthly changes: either works"))
    rows.append(Factor("iteration speed", "declared", req.iteration, *iteration))
    return rows


def recommend(a: Analysis) -> tuple[str, str]:
    """migrate, hybrid, stay or undecided, with the reason (see the module doc for the rule)."""
    lean = sum(f.weight * {"open": 1, "api": -1}.get(f.leans, 0) for f in a.factors if f.name != "task complexity")
    against = sorted((f for f in a.factors if f.leans == "api" and f.name != "task complexity"),
                     key=lambda f: -f.weight)
    gate = a.gate
    if gate is None:
        return "stay", f"there is no quality verdict to migrate on: {a.gate_error}"
    if gate.verdict == INVALID:
        return "undecided", gate.reason
    if gate.verdict == PASS:
        if lean > 0:
            return "migrate", (f"the candidate passes the gate and the other factors lean open (score {lean:+d}): "
                               f"${a.costs['monthly']['self_hosted']:,.0f}/month self-hosted against "
                               f"${a.costs['monthly']['api']:,.0f} on the API")
        lean_text = "are balanced" if lean == 0 else "lean to the API"
        return "stay", (f"the candidate passes the gate, but the other factors {lean_text} (score {lean:+d}): "
                        + "; ".join(f"{f.name}: {f.reason}" for f in against[:2]))
    why_not = _gate_shortfall(gate)
    unrepairable = [c.name for c in gate.checks if c.outcome == FAIL and not _repairable(c.name)]
    if unrepairable:
        return "stay", (f"the candidate fails the gate on {', '.join(unrepairable)}, which routing some cases to "
                        f"the API cannot mend ({why_not})")
    decision, why = _hybrid(a)
    if gate.verdict == INCONCLUSIVE:
        if decision == "hybrid":
            return "hybrid", f"the gate cannot vouch for the candidate alone ({why_not}); {why}"
        balance = "are balanced" if lean == 0 else "lean to the API"
        even = f"; even a pass would leave it on the API, as the other factors {balance} (score {lean:+d})" \
            if lean <= 0 else ""
        return "undecided", f"the gate cannot vouch for the candidate ({why_not}){even}; no hybrid settles it: {why}"
    return decision, f"the candidate fails the gate ({why_not}); {why}"


def _hybrid(a: Analysis) -> tuple[str, str]:
    """("hybrid", why) when a hybrid holds (see the module doc); else the decision a failed gate then gets, "stay"
    or "undecided" (the cross-fitted hybrid is too thin to judge), and why, in words that follow the gate's."""
    pick, cross = a.cascade_pick, a.cascade_crossfit
    if pick is None:
        curve = a.cascade_curve
        if curve is None:
            return "stay", f"no cascade could be simulated ({a.cascade_error})"
        if len(curve) and not bool(curve["within_margin"].iloc[-1]):
            n, margin = int(curve.attrs["cases"]), float(curve.attrs["margin"])
            needed = paired.cases_needed(np.zeros(n), margin, float(curve.attrs["confidence"])) if margin else None
            more = f" (about {needed:,} cases would)" if needed is not None else ""
            return "stay", (f"no threshold keeps quality within the margin: on {n} cases not even routing every case "
                            f"to the API can be shown within {margin:.3f} of it{more}")
        return "stay", "no threshold keeps quality within the margin"
    if pick.get("routes_everything"):
        return "stay", "only routing every case to the API keeps quality within the margin"
    if pick.get("routed", 0) == 0:
        return "stay", "the cascade's pick routes no case, which is the candidate alone"
    rule = _routing_rule(a)
    if cross is None:
        return "stay", "the hybrid could not be cross-fitted"
    if cross.verdict == FAIL:
        return "stay", (f"routing {rule} to the API keeps quality within the margin on the cases the threshold was "
                        f"chosen on, but not on cases it was not chosen on ({cross.summary()})")
    if cross.too_thin is not None:
        return "undecided", (f"routing {rule} to the API keeps quality within the margin on the cases the threshold "
                             f"was chosen on, but the evidence is too thin to recommend it: {cross.too_thin}")
    hybrid, api = a.costs["monthly"].get("hybrid"), a.costs["monthly"]["api"]
    if a.profile.requirements.team == "none":
        return "stay", "a hybrid would keep quality, but the team cannot run GPU serving (team = none)"
    share = f"{cross.routed_share:.0%} [{cross.routed_low:.0%}, {cross.routed_high:.0%}] of cases routed to the API"
    if hybrid is None:
        return "stay", f"a hybrid keeps quality with {share} (cross-fitted), but the API's cost per case is unknown"
    interval = "" if a.hybrid_interval is None else \
        f" [${a.hybrid_interval[0]:,.0f}, ${a.hybrid_interval[1]:,.0f}]"
    if hybrid >= api:
        return "stay", (f"a hybrid keeps quality with {share} (cross-fitted), but costs ${hybrid:,.0f}/month"
                        f"{interval} against ${api:,.0f} on the API alone")
    return "hybrid", (f"routing {rule} to the API keeps quality within the margin on cases the threshold was not "
                      f"chosen on (cross-fitted, {cross.folds} folds: {share}, quality {cross.quality:.3f} "
                      f"[{cross.quality_low:.3f}, {cross.quality_high:.3f}] against the API's "
                      f"{cross.incumbent_quality:.3f}, hybrid - API bounded below by {cross.lower_bound:+.3f}), at "
                      f"${hybrid:,.0f}/month{interval} against ${api:,.0f} on the API alone")


REPAIRABLE_CHECKS = ("non-inferiority", "min score", "max invalid-output rate", "max error rate")


def _repairable(check: str) -> bool:
    """Whether routing the candidate's doubtful answers to the API can mend this failed gate check: quality,
    validity and failed calls, not latency or cost ceilings (routing adds an API call to the candidate's)."""
    return check in REPAIRABLE_CHECKS or check.startswith("slice ")


def _routing_rule(a: Analysis) -> str:
    pick = a.cascade_pick or {}
    if pick.get("routes_invalid_only"):
        return "only the candidate's invalid or failed answers"
    return f"answers with {a.cascade_signal} below {_fmt_threshold(pick.get('threshold'))} (and invalid ones)"


def _latency_factor(a: Analysis) -> Factor:
    need = a.profile.requirements.latency_p95_ms
    mine, theirs = a.measured.candidate_latency_p95_ms, a.measured.api_latency_p95_ms
    value = (f"p95 {_ms(mine)} open ({a.measured.candidate_latency_source}), {_ms(theirs)} API "
             f"({a.measured.api_latency_source})")
    if need is None:
        return Factor("latency", "measured", value, "neutral", 0, "no latency requirement declared")
    if mine is None or theirs is None:
        unknown = "the open model's" if mine is None else "the API's"
        return Factor("latency", "measured", value, "neutral", 0,
                      f"{unknown} p95 is unknown: cannot compare with p95 ≤ {need:,.0f} ms")
    ok_open, ok_api = mine <= need, theirs <= need
    if ok_open and not ok_api:
        return Factor("latency", "measured", value, "open", 1, f"only the open model meets p95 ≤ {need:,.0f} ms")
    if ok_api and not ok_open:
        return Factor("latency", "measured", value, "api", HEAVY, f"only the API meets p95 ≤ {need:,.0f} ms")
    both = "both meet" if ok_open else "neither meets"
    return Factor("latency", "measured", value, "neutral", 0, f"{both} p95 ≤ {need:,.0f} ms")


def _quality_factor(a: Analysis) -> Factor:
    """The task-complexity row, from the gate's verdict: open on a pass, API on a fail, neither when the gate is
    inconclusive or the run invalid (the run says nothing either way)."""
    if a.gate is None:
        return Factor("task complexity", "measured", "no gate verdict", "api", 1, a.gate_error or "")
    if a.gate.verdict == INVALID:
        return Factor("task complexity", "measured", "invalid run", "neutral", 0, a.gate.reason)
    s = a.gate.stats
    value = (f"{s.get('mean_candidate', float('nan')):.3f} vs {s.get('mean_incumbent', float('nan')):.3f} "
             f"({s.get('metric')})")
    if a.gate.verdict == PASS:
        return Factor("task complexity", "measured", value, "open", 1,
                      f"within the gate's margin of {s.get('margin', 0):.3f}: the open model handles this task")
    if a.gate.verdict == INCONCLUSIVE:
        return Factor("task complexity", "measured", value, "neutral", 0, _gate_shortfall(a.gate))
    return Factor("task complexity", "measured", value, "api", 1, _gate_shortfall(a.gate))


def _gate_shortfall(gate: GateResult) -> str:
    """Why the gate did not pass: its first two failed checks, else its one-line reason (an inconclusive gate's
    names the paired cases that would settle it)."""
    failed = [c for c in gate.checks if c.outcome == FAIL]
    return "; ".join(f"{c.name}: {c.detail}" for c in failed[:2]) or gate.reason or f"the gate is {gate.verdict}"


def _routed_cost(pick: dict[str, Any] | None, cross: cascade.CrossFit | None,
                 measured: Measured) -> tuple[float, float, float] | None:
    """API USD per case (over all cases) of the hybrid, with its 95% interval: the cross-fitted routing's stored
    costs, else its routed share at the measured API cost per case (e.g. prices given with --pricing after the
    run); the in-sample pick's when the run could not be cross-fitted. None when there is no pick."""
    if pick is None:
        return None
    if cross is None or cross.folds < 2:
        value = pick.get("api_cost_per_case")
        if value is None or pd.isna(value):
            value = float(pick["routed_share"]) * measured.api_cost_per_case
        return float(value), float(value), float(value)
    if math.isnan(cross.api_cost_per_case):
        per_case = measured.api_cost_per_case
        return cross.routed_share * per_case, cross.routed_low * per_case, cross.routed_high * per_case
    return cross.api_cost_per_case, cross.api_cost_low, cross.api_cost_high


def _json_number(value: Any) -> Any:
    """None for an infinite or NaN float (strict JSON has neither), the value otherwise."""
    return None if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))) else value


def _fmt_threshold(value: Any) -> str:
    if value is None or value == float("inf"):
        return "any value"
    return "any value (invalid answers only)" if value == float("-inf") else f"{float(value):.3g}"


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f} ms"


def cost_text(a: Analysis, *, hybrid_detail: bool = True) -> str:
    """`harness cost`'s terminal output: assumptions, measurements, monthly cost per option, break-even and the
    hybrid's cross-fitted figures (only its threshold and cost interval without `hybrid_detail`: `decision_text`
    shows the rest with the cascade curve)."""
    m = a.measured
    lines = [f"cost of suite {a.suite}, run {a.run_id}: {m.candidate} (self-hosted) vs {m.api_provider} (API)",
             f"profile: {a.profile.source or '(defaults)'}"]
    lines += [f"  {name:<24} {value}" for name, value in a.profile.assumptions()]
    lines.append("measured:")
    lines.append(f"  {'API cost per case':<24} ${m.api_cost_per_case:.6f} ({m.api_price_source})")
    if m.api_tokens_per_case:
        lines.append(f"  {'API tokens per case':<24} {m.api_tokens_per_case:,.0f}")
    lines.append(f"  {'throughput per replica':<24} {m.throughput_cases_per_s:.3g} cases/s ({m.throughput_source})")
    if m.calls_per_case > 1:
        lines.append(f"  {'calls per case':<24} {m.calls_per_case:.2f} (extra samples for agreement)")
    lines.append(f"at {a.volume:,.0f} cases/month ({a.costs['replicas']} replica(s)):")
    for name, usd in a.costs["monthly"].items():
        per_1k = a.costs["per_1k"][name]
        mark = "  <- cheapest" if name == a.costs["cheapest"] else ""
        lines.append(f"  {name.replace('_', '-'):<12} ${usd:>12,.2f}/month   ${per_1k:>9,.4f} per 1,000 cases{mark}")
    if a.break_even is None:
        lines.append(f"break-even: never ({_never(a)})")
    else:
        tokens = (f", {a.break_even * m.api_tokens_per_case / 1e6:,.1f}M API tokens/month"
                  if m.api_tokens_per_case else "")
        lines.append(f"break-even: {a.break_even:,.0f} cases/month{tokens}; self-hosting is cheaper above it")
    if a.cascade_pick is not None and "hybrid" in a.costs["monthly"]:
        lines += _hybrid_lines(a, hybrid_detail)
    else:
        lines.append(f"hybrid: not simulated ({a.cascade_error or 'no threshold keeps quality within the margin'})")
    for scorer, per_1k in a.judge_cost_per_1k.items():
        shown = "unknown (the judge has no price)" if per_1k is None else f"${per_1k:,.4f} per 1,000 cases"
        lines.append(f"judge cost ({scorer}): {shown}: what evaluating costs, apart from serving")
    lines += [f"warning: {w}" for w in a.warnings]
    return "\n".join(lines)


def _hybrid_lines(a: Analysis, detail: bool = True) -> list[str]:
    """The hybrid's threshold and its cross-fitted figures with their intervals (in-sample ones, labelled, when
    the run could not be cross-fitted), and whether the evidence is too thin to recommend it."""
    pick, cross = a.cascade_pick or {}, a.cascade_crossfit
    cases = a.cascade_curve.attrs.get("cases") if a.cascade_curve is not None else None
    head = f"hybrid: route {_routing_rule(a)} to the API (threshold chosen on all {cases} cases)"
    if cross is None or cross.folds < 2:
        return [f"{head}: {pick['routed_share']:.0%} of cases, quality {pick['quality']:.3f} (in-sample: chosen and "
                "judged on the same cases; see `harness decide` for the curve)"]
    lines = [head, f"  {cross.summary()}"] if detail else [f"{head}: cross-fitted figures with the cascade below"]
    if a.hybrid_interval is not None:
        lines.append(f"  hybrid ${a.costs['monthly']['hybrid']:,.2f}/month, 95% interval "
                     f"[${a.hybrid_interval[0]:,.2f}, ${a.hybrid_interval[1]:,.2f}] from the cross-fitted API spend")
    if not detail:
        return lines
    if cross.too_thin is not None:
        lines.append(f"  too thin to recommend a threshold: {cross.too_thin}")
    elif cross.verdict == FAIL:
        lines.append("  not recommended: on cases the threshold was not chosen on, the hybrid is shown worse than "
                     "the margin allows")
    lines += [f"  {note}" for note in cross.notes]
    return lines


def _never(a: Analysis) -> str:
    """Why self-hosting never breaks even."""
    if a.measured.api_cost_per_case <= 0:
        return "the API costs nothing per case at these prices"
    return "a replica costs more than the API calls it would replace"


def decision_text(a: Analysis) -> str:
    """`harness decide`'s terminal output: the cost lines, the cascade curve, the matrix and the decision."""
    lines = [cost_text(a, hybrid_detail=False), ""]
    if a.cascade_curve is not None:
        lines.append(cascade.cascade_text(a.cascade_curve, a.cascade_pick, a.cascade_signal,
                                          cross=a.cascade_crossfit))
    else:
        lines.append(f"cascade: not simulated ({a.cascade_error})")
    lines += ["", "decision matrix:"]
    for f in a.factors:
        arrow = {"open": "-> open", "api": "-> API"}.get(f.leans, "   -")
        weight = f" x{f.weight}" if f.weight > 1 else ""
        lines.append(f"  {f.name:<17} {f.half:<9} {arrow:<8}{weight:<3} {f.value}")
        lines.append(f"  {'':<17} {'':<9} {f.reason}")
    lines += ["", f"recommendation: {a.decision.upper()}", f"  {a.reason}"]
    return "\n".join(lines)
