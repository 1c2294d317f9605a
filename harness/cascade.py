"""Hybrid / cascade simulation on a stored shadow run: what if the candidate answered and the API took the rest?

The rule simulated: send a case to the API (the incumbent) when the candidate's answer is invalid (an error, no
answer, or a failed validity check: an application sees that at no cost), or when its confidence is below a
threshold. Every case of the run has both answers stored, so each threshold's hybrid quality and API spend are
computed at no extra model cost.

Confidence signals (`SIGNALS`), higher meaning surer: the mean, and the least, token log-probability of the
answer, the mean margin between each token's two likeliest alternatives (servers that return logprobs), the
share of extra samples agreeing with the answer (providers with `samples`), and validity alone (1 for every
valid answer: the cascade that routes only invalid answers). A valid answer with no value of the signal counts
as the least confident: it is routed at every threshold except the lowest.

Quality is the gate's per-case metric (`verdict.per_case_metric`: pass/fail for `pass_rate`, else the stored
score such as `field.total`; a missing answer scores 0), and each threshold is judged by the gate's own rule:
the paired-bootstrap lower bound of (hybrid - incumbent) at the policy's confidence must be above -margin.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import HarnessError
from harness.gate import lower_bounds
from harness.outcomes import wilson_interval
from harness.scorers import VALIDITY_METRICS
from harness.store import Store
from harness.suite import GateSpec

SIGNALS = ("logprob_mean", "margin_mean", "logprob_min", "agreement", "valid")
COVERAGE = 0.9  # `auto` takes a signal present on at least this share of the valid answers
CONFIDENCE_LEVEL = 0.95  # of the quality interval
MAX_TEXT_ROWS = 15
MAX_THRESHOLDS = 200  # thresholds swept at most: every distinct confidence up to this, else evenly spaced quantiles

CURVE_COLUMNS = ("threshold", "routed", "routed_share", "quality", "quality_low", "quality_high", "difference",
                 "lower_bound", "within_margin", "api_cost_per_case")


def cascade_frame(
    store: Store, run_id: str, *, candidate: str | None = None, incumbent: str | None = None,
    metric: str = "pass_rate",
) -> pd.DataFrame:
    """One row per case of `run_id`, in case-id order (the gate's pairing order): `case_id`, `answered` (the
    candidate answered without error), `valid` (answered and every validity check passed), the candidate's
    signals (`logprob_mean`, `margin_mean`, `logprob_min`, `logprob_tokens`, `agreement`: NaN where not
    captured), the per-case metric of the `candidate` and of the `incumbent` (the gate's rules), and
    `api_cost_usd`, the incumbent's stored cost of that case (NaN when unknown or the call failed). The providers
    default to the run's first ready candidate and incumbent; `attrs` records run, providers and metric."""
    # imported here: verdict imports the report module, which may show the cascade
    from harness.verdict import per_case_metric

    store.run(run_id)
    providers = store.table("run_providers", run_id)
    ready = providers[providers["status"] == "ready"]
    candidate = _provider(run_id, ready, providers, "candidate", candidate)
    incumbent = _provider(run_id, ready, providers, "incumbent", incumbent)
    cases = sorted(store.table("cases", run_id)["case_id"])
    responses = store.table("responses", run_id)
    scores = store.table("scores", run_id)
    mine = responses[responses["provider"] == candidate].set_index("case_id")
    theirs = responses[responses["provider"] == incumbent].set_index("case_id")
    frame = pd.DataFrame({"case_id": cases})
    answered = mine["error"].isna().reindex(cases, fill_value=False).astype(bool)
    checks = scores[(scores["provider"] == candidate) & scores["metric"].isin(VALIDITY_METRICS)]
    checks_pass = checks["passed"].fillna(False).astype(bool).groupby(checks["case_id"]).all()
    frame["answered"] = answered.to_numpy()
    frame["valid"] = (answered & checks_pass.reindex(cases, fill_value=True).astype(bool)).to_numpy()
    for column in ("logprob_mean", "margin_mean", "logprob_min", "logprob_tokens", "agreement"):
        values = mine[column] if column in mine.columns else pd.Series(dtype=float)
        frame[column] = pd.to_numeric(values.reindex(cases), errors="coerce").astype(float).to_numpy()
    mine_metric = per_case_metric(store, run_id, candidate, metric, cases)
    theirs_metric = per_case_metric(store, run_id, incumbent, metric, cases)
    frame["candidate"] = [mine_metric[c] for c in cases]
    frame["incumbent"] = [theirs_metric[c] for c in cases]
    cost = theirs["cost_usd"].where(theirs["error"].isna())
    frame["api_cost_usd"] = pd.to_numeric(cost.reindex(cases), errors="coerce").astype(float).to_numpy()
    frame.attrs = {"run_id": run_id, "candidate": candidate, "incumbent": incumbent, "metric": metric}
    return frame


def _provider(run_id: str, ready: pd.DataFrame, providers: pd.DataFrame, role: str, name: str | None) -> str:
    """The provider of `role` to use: `name` if it ran, else the first ready one of that role."""
    if name is not None:
        if name not in set(ready["provider"]):
            raise HarnessError(f"run {run_id} has no answers of '{name}' (ran: {', '.join(ready['provider'])})")
        return name
    names = list(ready[ready["role"] == role]["provider"])
    if names:
        return names[0]
    if role == "candidate":
        raise HarnessError(f"run {run_id} has no candidate that ran")
    reason = providers[providers["role"] == "incumbent"]["reason"]
    why = f" (skipped: {reason.iloc[0]})" if len(reason) and isinstance(reason.iloc[0], str) else ""
    raise HarnessError(f"run {run_id} has no incumbent answers to compare with{why}; a cascade routes cases to "
                       "the incumbent, so its answers must be in the same run")


def signal_coverage(frame: pd.DataFrame) -> dict[str, float]:
    """Signal -> the share of the valid answers that have a value of it (`valid` is always 1.0)."""
    valid = frame[frame["valid"]]
    out = {}
    for signal in SIGNALS:
        if signal == "valid":
            out[signal] = 1.0
        elif signal not in valid.columns or valid.empty:
            out[signal] = 0.0
        else:
            out[signal] = float(valid[signal].notna().mean())
    return out


def choose_signal(frame: pd.DataFrame, requested: str = "auto") -> str:
    """The confidence signal to route on. `auto`: the first of `SIGNALS` present on at least `COVERAGE` (90%)
    of the valid answers (a few answers without logprobs, e.g. replayed from an older cache, do not rule a
    signal out; they count as least confident), else `valid`. A named signal must have at least one value."""
    coverage = signal_coverage(frame)
    if requested == "auto":
        return next(s for s in SIGNALS if coverage[s] >= COVERAGE)
    if requested not in SIGNALS:
        raise HarnessError(f"unknown cascade signal '{requested}' (one of auto, {', '.join(SIGNALS)})")
    if coverage[requested] == 0:
        have = ", ".join(s for s in SIGNALS if coverage[s] > 0)
        raise HarnessError(f"cascade signal '{requested}': the run has no values of it (it has: {have})")
    return requested


def _confidence(frame: pd.DataFrame, signal: str) -> np.ndarray:
    """The signal per case, -inf where a valid answer has no value (the least confident)."""
    if signal not in SIGNALS:
        raise HarnessError(f"unknown cascade signal '{signal}' (one of {', '.join(SIGNALS)})")
    if signal == "valid":
        return np.ones(len(frame))
    values = frame[signal].to_numpy(dtype=float, na_value=np.nan)
    return np.where(np.isnan(values), -np.inf, values)


def _routing(valid: np.ndarray, confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """thresholds x cases: True where the case goes to the API."""
    return ~valid[None, :] | (confidence[None, :] < thresholds[:, None])


def route(frame: pd.DataFrame, signal: str, threshold: float) -> pd.Series:
    """Per case (index: case_id), whether the cascade at `threshold` sends it to the API."""
    mask = _routing(frame["valid"].to_numpy(dtype=bool), _confidence(frame, signal), np.array([threshold]))[0]
    return pd.Series(mask, index=frame["case_id"], name="routed")


def _filled_costs(frame: pd.DataFrame) -> np.ndarray:
    """The incumbent's cost per case, unknown ones filled with the mean known cost (all NaN if none is known)."""
    cost = frame["api_cost_usd"].to_numpy(dtype=float, na_value=np.nan)
    known = cost[~np.isnan(cost)]
    return np.where(np.isnan(cost), known.mean() if len(known) else np.nan, cost)


def _intervals(values: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of each row's mean: Wilson for 0/1 outcomes, Student's t for a continuous metric (clipped
    to [0, 1] when every value lies there, as scores do)."""
    n = values.shape[1]
    if binary:
        bounds = [wilson_interval(round(float(row.sum())), n) for row in values]
        return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    mean = values.mean(axis=1)
    if n < 2:
        return np.full(len(values), np.nan), np.full(len(values), np.nan)
    half = stats.t.ppf(0.5 + CONFIDENCE_LEVEL / 2, n - 1) * values.std(axis=1, ddof=1) / math.sqrt(n)
    low, high = mean - half, mean + half
    if values.min() >= 0 and values.max() <= 1:
        low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
    return low, high


def sweep(frame: pd.DataFrame, signal: str, policy: GateSpec) -> pd.DataFrame:
    """The cascade curve: one row per threshold, ordered by routed share. A case goes to the API when the
    candidate's answer is invalid or its `signal` is below `threshold`. Thresholds: -inf (only invalid answers
    routed), each distinct value of the signal on the valid answers that routes more, and +inf (everything).

    Columns: `threshold`, `routed` (cases), `routed_share`, `quality` (mean per-case metric of the hybrid),
    `quality_low`/`quality_high` (95%: Wilson for 0/1 metrics, Student's t otherwise), `difference` (hybrid -
    incumbent), `lower_bound` (the gate's paired-bootstrap bound of that difference at `policy.confidence`),
    `within_margin` (lower_bound > -policy.margin, with at least 2 cases, as the gate requires) and
    `api_cost_per_case` (USD, over all cases; unknown costs filled with the mean known one, NaN if none is known).
    `attrs` holds the signal, metric, margin, confidence, cases and the candidate's and incumbent's quality."""
    n = len(frame)
    attrs = {"signal": signal, "metric": frame.attrs.get("metric", policy.metric), "margin": policy.margin,
             "confidence": policy.confidence, "cases": n}
    conf = _confidence(frame, signal)
    if n == 0:
        curve = pd.DataFrame({c: pd.Series(dtype=bool if c == "within_margin" else float) for c in CURVE_COLUMNS})
        curve.attrs = attrs
        return curve
    valid = frame["valid"].to_numpy(dtype=bool)
    cand = frame["candidate"].to_numpy(dtype=float)
    inc = frame["incumbent"].to_numpy(dtype=float)
    values = np.unique(conf[valid])
    if len(values) > MAX_THRESHOLDS:  # the routing matrix is thresholds x cases: keep it bounded on big runs
        values = np.unique(np.quantile(values, np.linspace(0, 1, MAX_THRESHOLDS), method="lower"))
    thresholds = np.unique(np.concatenate([[-np.inf], values, [np.inf]]))
    routed = _routing(valid, conf, thresholds)
    counts = routed.sum(axis=1)
    _, first = np.unique(counts, return_index=True)  # the lowest threshold of each distinct routed set
    thresholds, routed, counts = thresholds[first], routed[first], counts[first]
    hybrid = np.where(routed, inc[None, :], cand[None, :])
    quality = hybrid.mean(axis=1)
    binary = bool(np.isin(np.concatenate([cand, inc]), (0.0, 1.0)).all())
    low, high = _intervals(hybrid, binary)
    bounds = lower_bounds(hybrid - inc[None, :], policy.confidence, policy.bootstrap, policy.seed)
    cost = _filled_costs(frame)
    api_cost = (np.where(routed, cost[None, :], 0.0)).sum(axis=1) / n
    curve = pd.DataFrame({
        "threshold": thresholds, "routed": counts, "routed_share": counts / n, "quality": quality,
        "quality_low": low, "quality_high": high, "difference": quality - inc.mean(), "lower_bound": bounds,
        "within_margin": (bounds > -policy.margin) & (n >= 2), "api_cost_per_case": api_cost,
    })
    curve.attrs = {**attrs, "candidate_quality": float(cand.mean()), "incumbent_quality": float(inc.mean())}
    return curve


def recommend(curve: pd.DataFrame) -> dict[str, Any] | None:
    """The cheapest threshold whose hybrid stays within the gate's margin of the incumbent. The routed sets are
    nested (a higher threshold routes every case a lower one does), so the API cost never falls as the routed
    share grows: the cheapest row is the one routing the fewest cases, known costs or not.

    The row as a dict, plus `routes_everything`: True when only sending every case to the API keeps quality
    (that is the incumbent alone: stay on the API, not a hybrid), and `routes_invalid_only`: True when the
    candidate alone does, its invalid answers retried on the API. None when no row is within the margin (an
    empty run, or a margin of 0, which not even the incumbent itself clears)."""
    ok = curve[curve["within_margin"].astype(bool)]
    if ok.empty:
        return None
    row = ok.loc[ok["routed_share"].idxmin()]
    out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.to_dict().items()}
    out["routes_everything"] = bool(row["routed_share"] >= 1.0)
    out["routes_invalid_only"] = bool(row["threshold"] == -np.inf)
    return out


def oracle(frame: pd.DataFrame) -> dict[str, float]:
    """The best any signal could do, for reference: route exactly the invalid answers and the cases where the
    candidate scores below the incumbent. `routed`, `routed_share`, `quality`, `api_cost_per_case`."""
    n = len(frame)
    if n == 0:
        return {"routed": 0, "routed_share": float("nan"), "quality": float("nan"), "api_cost_per_case": float("nan")}
    cand = frame["candidate"].to_numpy(dtype=float)
    inc = frame["incumbent"].to_numpy(dtype=float)
    routed = ~frame["valid"].to_numpy(dtype=bool) | (cand < inc)
    cost = _filled_costs(frame)
    return {"routed": int(routed.sum()), "routed_share": float(routed.mean()),
            "quality": float(np.where(routed, inc, cand).mean()),
            "api_cost_per_case": float(np.where(routed, cost, 0.0).sum() / n)}


def _rows_to_show(n: int, keep: int | None) -> list[int]:
    """At most `MAX_TEXT_ROWS` row positions, evenly spread, the first, last and `keep` included."""
    if n <= MAX_TEXT_ROWS:
        return list(range(n))
    picked = {round(float(x)) for x in np.linspace(0, n - 1, MAX_TEXT_ROWS - 1)}
    if keep is not None:
        picked.add(keep)
    return sorted(picked)


def _threshold_label(value: float) -> str:
    if value == -np.inf:
        return "invalid only"
    if value == np.inf:
        return "everything"
    return f"< {value:.4g}"


def _money(per_case: float) -> str:
    return "unknown" if per_case is None or math.isnan(per_case) else f"{per_case * 1000:.2f}"


def cascade_text(curve: pd.DataFrame, rec: dict[str, Any] | None, signal: str,
                 oracle_row: dict[str, float] | None = None) -> str:
    """The curve as a terminal table (at most 15 rows, the recommended one marked `*`) and the recommendation."""
    a = curve.attrs
    head = f"cascade on {signal}"
    if "metric" in a:
        head += f": {a['metric']} within {a['margin']:.3f} of the incumbent at {a['confidence']:.0%} confidence"
    rule = (f"  a case goes to the API when the candidate's answer is invalid or its {signal} is below the threshold;"
            " lower bound: of hybrid - incumbent")
    lines = [head, rule, f"  {'route when':<14} {'routed':>7} {'quality':>8}  {'95% interval':<15} {'lower bound':>11} "
                   f"{'API $/1k':>9}"]
    keep = None
    if rec is not None:
        match = np.flatnonzero((curve["threshold"] == rec["threshold"]).to_numpy())
        keep = int(match[0]) if len(match) else None
    for i in _rows_to_show(len(curve), keep):
        row = curve.iloc[i]
        interval = ("" if math.isnan(row["quality_low"]) else
                    f"[{row['quality_low']:.3f}, {row['quality_high']:.3f}]")
        lines.append(f"{'*' if i == keep else ' '} {_threshold_label(row['threshold']):<14} "
                     f"{row['routed_share']:>7.1%} {row['quality']:>8.3f}  {interval:<15} "
                     f"{row['lower_bound']:>+11.3f} {_money(row['api_cost_per_case']):>9}")
    if oracle_row is not None and not math.isnan(oracle_row["routed_share"]):
        lines.append(f"  {'(oracle)':<14} {oracle_row['routed_share']:>7.1%} {oracle_row['quality']:>8.3f}  "
                     f"{'':<15} {'':>11} {_money(oracle_row['api_cost_per_case']):>9}")
    if rec is None:
        lines.append("no threshold keeps quality within the margin of the incumbent")
    elif rec["routes_everything"]:
        lines.append("recommended: stay on the API; only sending every case to it keeps quality within the margin")
    else:
        rule = ("only invalid answers to the API" if rec["routes_invalid_only"]
                else f"to the API when {signal} < {rec['threshold']:.4g}")
        incumbent = f" (incumbent {a['incumbent_quality']:.3f})" if "incumbent_quality" in a else ""
        cost = _money(rec["api_cost_per_case"])
        spend = "API cost unknown" if cost == "unknown" else f"API ${cost} per 1k cases"
        lines.append(f"recommended: * route {rule}: {rec['routed_share']:.1%} of cases, quality "
                     f"{rec['quality']:.3f}{incumbent}, {spend}")
    return "\n".join(lines)
