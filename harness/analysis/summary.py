"""Per-provider figures of a stored run: pass rate, error and invalid-output rates, latency percentiles, cost,
retries and tokens (`summarize`), per-case pass/fail (`case_passes`) and per-field accuracy, precision, recall
and F1 (`field_metrics`).
"""

from __future__ import annotations

import pandas as pd

from harness.scoring.base import SEVERAL_VALUES, parse_detail

VALIDITY_METRICS = ("valid_json", "valid_label")  # an answer failing any of these is invalid output


def summarize(outcomes: pd.DataFrame, n_cases: int) -> pd.DataFrame:
    """One row per provider with an answer stored, from the run's outcome table (`analysis.outcomes`, one row per
    case and provider): pass rate (errors and missing answers count as failures), error and invalid-output
    rates, latency percentiles and cost (cache hits excluded from both: they cost nothing and took no time in
    this run), retries and time lost to rate limits, and token totals.

    `cost_usd` sums the priced answers; `cost_unknown` counts answers with no price (unknown model or usage),
    so a partial sum is never mistaken for the whole; `cost_usd` is None when nothing was priced."""
    rows = []
    stored = outcomes[outcomes["status"] != "no answer"]
    for provider, group in stored.groupby("provider", sort=False):
        failed = group["status"] == "error"
        validity = group["valid"].dropna().astype(bool)
        called = group[~group["cached"].astype(bool)]
        live = called[called["status"] != "error"]
        priced = called["cost_usd"].dropna()
        passed = int((group["status"] == "pass").sum())
        rows.append({
            "provider": provider,
            "cases": n_cases,
            "answered": int((~failed).sum()),
            "errors": int(failed.sum()),
            "passed": passed,
            "pass_rate": passed / n_cases if n_cases else float("nan"),
            "invalid_rate": float((~validity).sum()) / len(validity) if len(validity) else float("nan"),
            "latency_p50_ms": _pct(live["latency_ms"], 50),
            "latency_p95_ms": _pct(live["latency_ms"], 95),
            "ttft_p50_ms": _pct(live["ttft_ms"], 50),
            "ttft_p95_ms": _pct(live["ttft_ms"], 95),
            "input_tokens": _sum(group["input_tokens"]),
            "output_tokens": _sum(group["output_tokens"]),
            "cached": len(group) - len(called),
            "cost_usd": float(priced.sum()) if len(priced) else None,
            "cost_unknown": int(live["cost_usd"].isna().sum()),
            "retries": int((called["attempts"].fillna(1) - 1).clip(lower=0).sum()),
            "rate_limit_wait_ms": float(called["rate_limit_wait_ms"].fillna(0).sum()),
        })
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["provider"])


def case_passes(scores: pd.DataFrame) -> pd.Series:
    """Pass/fail per case (index: case_id): a case passes when every scorer's `case_pass` passed."""
    rows = scores[scores["metric"] == "case_pass"]
    return rows["passed"].fillna(False).astype(bool).groupby(rows["case_id"]).all()


def field_counts(scores: pd.DataFrame) -> pd.DataFrame:
    """Score rows (the `scores` table) counted per provider, field, outcome and gold-in-input flag (`n` rows,
    `passed` of them passed), as `store.queries.field_counts` counts them in SQL."""
    fields = scores[scores["metric"].str.startswith("field.")]
    details = fields["detail"].map(parse_detail)
    frame = pd.DataFrame({
        "provider": fields["provider"], "field": fields["metric"].str.removeprefix("field."),
        "outcome": details.map(lambda d: d.get("outcome")), "gold_in_input": details.map(lambda d: d.get(
            "gold_in_input")).astype(object), "passed": fields["passed"].fillna(False).astype(bool)})
    return (frame.groupby(["provider", "field", "outcome", "gold_in_input"], sort=False, dropna=False)
            .agg(n=("passed", "size"), passed=("passed", "sum")).reset_index())


def field_metrics(scores: pd.DataFrame, failed_calls: dict[str, int] | None = None) -> pd.DataFrame:
    """Per provider and field of score rows (the `scores` table): `field_metrics_from_counts` of their
    `field_counts`."""
    return field_metrics_from_counts(field_counts(scores), failed_calls)


def field_metrics_from_counts(counts: pd.DataFrame, failed_calls: dict[str, int] | None = None) -> pd.DataFrame:
    """Per provider and field: accuracy, precision, recall and F1; where the suite flags gold values that do
    not occur in the input (`gold_in_input_field`), also the accuracy on the others and how many there are.
    `counts`: field score rows counted per provider, field, outcome and gold_in_input (`n`, `passed`).

    True positive: `correct`. False positive: `wrong`, `several values` (counted as a wrong value) or `extra` (a
    value where gold has none). False negative: `wrong`, `several values`, `missing`, `invalid_output`, and one
    per failed call of the provider (`failed_calls`), which has no score rows. `absent` (no gold value, none
    predicted) counts for accuracy only.
    """
    if counts.empty:
        return pd.DataFrame(columns=["provider", "field", "accuracy", "precision", "recall", "f1", "n",
                                     "accuracy_gold_in_input", "n_gold_not_in_input"])
    failed_calls = failed_calls or {}
    rows = []
    for (provider, name), group in counts.groupby(["provider", "field"], sort=False):
        by_outcome = group.groupby("outcome", dropna=False)["n"].sum()
        failed = failed_calls.get(provider, 0)
        tp = int(by_outcome.get("correct", 0))
        wrong = int(by_outcome.get("wrong", 0)) + int(by_outcome.get(SEVERAL_VALUES, 0))
        fp = wrong + int(by_outcome.get("extra", 0))
        fn = wrong + int(by_outcome.get("missing", 0)) + int(by_outcome.get("invalid_output", 0)) + failed
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        n = int(group["n"].sum()) + failed
        flagged = group[group["gold_in_input"] == True]  # noqa: E712 (a column of True, False and None)
        unflagged = int(group.loc[group["gold_in_input"] == False, "n"].sum())  # noqa: E712
        rows.append({
            "provider": provider, "field": name, "accuracy": float(group["passed"].sum()) / n,
            "precision": precision, "recall": recall, "f1": f1, "n": n,
            # accuracy where the gold value occurs in the input, and how many gold values do not (SROIE slips)
            "accuracy_gold_in_input": float(flagged["passed"].sum()) / float(flagged["n"].sum())
            if unflagged and flagged["n"].sum() else (float("nan") if unflagged else None),
            "n_gold_not_in_input": unflagged,
        })
    return pd.DataFrame(rows)


def _pct(series: pd.Series, q: float) -> float | None:
    values = series.dropna()
    return float(values.quantile(q / 100)) if len(values) else None


def _sum(series: pd.Series) -> int | None:
    values = series.dropna()
    return int(values.sum()) if len(values) else None
