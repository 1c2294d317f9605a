"""Per-provider figures of a stored run: pass rate, error and invalid-output rates, latency percentiles, cost,
retries and tokens (`summarize`), per-case pass/fail (`case_passes`) and per-field accuracy, precision, recall
and F1 (`field_metrics`).
"""

from __future__ import annotations

import pandas as pd

from harness.scoring.base import SEVERAL_VALUES, parse_detail

VALIDITY_METRICS = ("valid_json", "valid_label")  # an answer failing any of these is invalid output


def summarize(responses: pd.DataFrame, scores: pd.DataFrame, n_cases: int) -> pd.DataFrame:
    """One row per provider: pass rate (errors and missing answers count as failures), error and
    invalid-output rates, latency percentiles and cost (cache hits excluded from both: they cost nothing and
    took no time in this run), retries and time lost to rate limits, and token totals.

    `cost_usd` sums the priced answers; `cost_unknown` counts answers with no price (unknown model or usage),
    so a partial sum is never mistaken for the whole; `cost_usd` is None when nothing was priced."""
    rows = []
    for provider, group in responses.groupby("provider", sort=False):
        mine = scores[scores["provider"] == provider]
        passes = case_passes(mine)
        checks = mine[mine["metric"].isin(VALIDITY_METRICS)]
        valid = checks["passed"].fillna(False).astype(bool).groupby(checks["case_id"]).all()
        called = group[~group["cached"].fillna(False).astype(bool)]
        live = called[called["error"].isna()]
        priced = called["cost_usd"].dropna()
        rows.append({
            "provider": provider,
            "cases": n_cases,
            "answered": int(group["error"].isna().sum()),
            "errors": int(group["error"].notna().sum()),
            "passed": int(passes.sum()),
            "pass_rate": float(passes.sum()) / n_cases if n_cases else float("nan"),
            "invalid_rate": float((~valid).sum()) / len(valid) if len(valid) else float("nan"),
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
    return pd.DataFrame(rows)


def case_passes(scores: pd.DataFrame) -> pd.Series:
    """Pass/fail per case (index: case_id): a case passes when every scorer's `case_pass` passed."""
    rows = scores[scores["metric"] == "case_pass"]
    return rows["passed"].fillna(False).astype(bool).groupby(rows["case_id"]).all()


def field_metrics(scores: pd.DataFrame, failed_calls: dict[str, int] | None = None) -> pd.DataFrame:
    """Per provider and field: accuracy, precision, recall and F1; where the suite flags gold values that do
    not occur in the input (`gold_in_input_field`), also the accuracy on the others and how many there are.

    True positive: `correct`. False positive: `wrong`, `several values` (counted as a wrong value) or `extra` (a
    value where gold has none). False negative: `wrong`, `several values`, `missing`, `invalid_output`, and one
    per failed call of the provider (`failed_calls`), which has no score rows. `absent` (no gold value, none
    predicted) counts for accuracy only.
    """
    fields = scores[scores["metric"].str.startswith("field.")]
    if fields.empty:
        return pd.DataFrame(columns=["provider", "field", "accuracy", "precision", "recall", "f1", "n",
                                     "accuracy_gold_in_input", "n_gold_not_in_input"])
    failed_calls = failed_calls or {}
    details = fields["detail"].map(parse_detail)
    frame = fields.assign(outcome=details.map(lambda d: d.get("outcome")),
                          gold_in_input=details.map(lambda d: d.get("gold_in_input")),
                          field=fields["metric"].str.removeprefix("field."))
    rows = []
    for (provider, name), group in frame.groupby(["provider", "field"], sort=False):
        counts = group["outcome"].value_counts()
        failed = failed_calls.get(provider, 0)
        tp = int(counts.get("correct", 0))
        wrong = int(counts.get("wrong", 0)) + int(counts.get(SEVERAL_VALUES, 0))
        fp = wrong + int(counts.get("extra", 0))
        fn = wrong + int(counts.get("missing", 0)) + int(counts.get("invalid_output", 0)) + failed
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        n = len(group) + failed
        flagged = group[group["gold_in_input"] == True]  # noqa: E712 (a column of True, False and None)
        unflagged = int((group["gold_in_input"] == False).sum())  # noqa: E712
        rows.append({
            "provider": provider, "field": name, "accuracy": float(group["passed"].astype(bool).sum()) / n,
            "precision": precision, "recall": recall, "f1": f1, "n": n,
            # accuracy where the gold value occurs in the input, and how many gold values do not (SROIE slips)
            "accuracy_gold_in_input": float(flagged["passed"].astype(bool).mean()) if unflagged else None,
            "n_gold_not_in_input": unflagged,
        })
    return pd.DataFrame(rows)


def _pct(series: pd.Series, q: float) -> float | None:
    values = series.dropna()
    return float(values.quantile(q / 100)) if len(values) else None


def _sum(series: pd.Series) -> int | None:
    values = series.dropna()
    return int(values.sum()) if len(values) else None
