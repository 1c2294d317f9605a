"""The cascade simulation on synthetic stored runs with known confidences, every expected number derived by hand.

The main run: 10 cases c0..c9, the candidate's mean token logprob of case i is -(10 - i)/10 (c0 the least sure),
it fails exactly c0, c1 and c2 (the three least sure), the incumbent passes everything and costs 0.001 x (i + 1)
USD on case i. Routing the k least sure cases gives quality 0.7 + 0.1k up to k = 3, then 1.0.

The paired score test by hand (`harness.paired`, Tango 1998): when the hybrid never beats the incumbent and loses
on b of n cases, the estimate of the differences' distribution restricted to mean -m (the margin) puts mass m on
-1 and 1 - m on 0 (the observed values suffice), so its variance is m (1 - m) and, continuity-corrected,

    Z = (n m - b - 0.5) / sqrt(n m (1 - m))      (0 when n m - b <= 0.5),

`pass` above z = 1.6449 (95%). On the main run (n = 10): at m = 0.35, sqrt(2.275) = 1.508 and b = 3, 2, 1, 0
give Z = 0, 0.663, 1.326, 1.989: only routing all three failures passes. At m = 0.7 (sqrt(2.1) = 1.449) b = 3
gives 2.415; at m = 0.55 (1.573) b = 2 gives 1.907 and b = 3 1.271; at m = 0.45 (1.573) b = 1 gives 1.907 and b = 2
1.271. With no loss at all the lower bound solves n m - 0.5 = z sqrt(n m (1 - m)), a quadratic:
m = (n + z^2 n + sqrt((n + z^2 n)^2 - (n^2 + z^2 n))) / (2 (n^2 + z^2 n)) = 0.2847 for n = 10.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.analysis import cascade, paired
from harness.analysis.cascade import (
    SIGNALS,
    assign_folds,
    cascade_frame,
    cascade_text,
    choose_signal,
    crossfit,
    oracle,
    recommend,
    route,
    sweep,
)
from harness.analysis.intervals import wilson_interval
from harness.analysis.verdict import gate_run
from harness.errors import HarnessError
from harness.store.db import Store
from harness.suite.spec import GateSpec

CAND, INC = "local:m", "openai:gpt-4o-mini"
Z95 = 1.6448536269514722


def _z(n: int, b: int, m: float) -> float:
    """The module doc's Z: b losses and no win in n cases, at margin m."""
    return max(n * m - b - 0.5, 0.0) / math.sqrt(n * m * (1 - m))


def _case(i: int, **over: Any) -> dict[str, Any]:
    """Case `c{i}` of the main run, with `over` replacing any of its fields."""
    return {"id": f"c{i}", "lp": -(10 - i) / 10, "cand": i >= 3, "inc": True, "valid": True, "error": None,
            "cost": 0.001 * (i + 1), "agreement": None, "cand_total": None, "inc_total": None, **over}


MAIN = [_case(i) for i in range(10)]


def _store_run(store: Store, cases: list[dict[str, Any]], *, incumbent: str = "ready") -> str:
    """A completed run of `cases` (see `_case`) stored row by row, as the runner would have."""
    run_id = store.start_run({"suite": "synthetic", "n_cases": len(cases)})
    store.insert("run_providers", [
        {"run_id": run_id, "provider": INC, "role": "incumbent", "status": incumbent,
         "reason": None if incumbent == "ready" else "OPENAI_API_KEY is not set"},
        {"run_id": run_id, "provider": CAND, "role": "candidate", "status": "ready"},
    ])
    store.insert("cases", [{"run_id": run_id, "case_id": c["id"], "position": i, "input": {}, "gold": {}}
                           for i, c in enumerate(cases)])
    responses, scores = [], []
    for c in cases:
        lp = c["lp"]
        responses.append({"run_id": run_id, "case_id": c["id"], "provider": CAND, "error": c["error"],
                          "cost_usd": None, "logprob_mean": lp, "logprob_min": None if lp is None else 2 * lp,
                          "logprob_tokens": None if lp is None else 5, "agreement": c["agreement"]})
        if incumbent == "ready":  # the same keys in every row: Store.insert takes its columns from the first
            responses.append({"run_id": run_id, "case_id": c["id"], "provider": INC, "error": None,
                              "cost_usd": c["cost"], "logprob_mean": None, "logprob_min": None,
                              "logprob_tokens": None, "agreement": None})
        sides = [(CAND, c["cand"], c["valid"], c["cand_total"])] if c["error"] is None else []
        if incumbent == "ready":
            sides.append((INC, c["inc"], True, c["inc_total"]))
        for provider, passed, valid, total in sides:
            total = float(passed) if total is None else total
            for metric, value, ok in [("case_pass", float(passed), passed), ("valid_json", float(valid), valid),
                                      ("field.total", total, total == 1.0)]:
                scores.append({"run_id": run_id, "case_id": c["id"], "provider": provider, "scorer": "fields",
                               "metric": metric, "value": value, "passed": ok, "detail": {}})
    store.insert("responses", responses)
    store.insert("scores", scores)
    store.finish_run(run_id, "completed")
    return run_id


def _curve(tmp_path: Path, cases: list[dict[str, Any]], policy: GateSpec, metric: str = "pass_rate"):
    with Store(tmp_path / "s.duckdb") as store:
        frame = cascade_frame(store, _store_run(store, cases), metric=metric)
    return frame, sweep(frame, "logprob_mean", policy)


def _row(curve: pd.DataFrame, routed: int) -> pd.Series:
    (i,) = np.flatnonzero(curve["routed"].to_numpy() == routed)
    return curve.iloc[i]


def test_routing_the_three_least_sure_cases_restores_quality_and_is_recommended(tmp_path):
    frame, curve = _curve(tmp_path, MAIN, GateSpec(margin=0.35))
    assert list(frame["case_id"]) == [f"c{i}" for i in range(10)]
    assert frame["valid"].all() and list(frame["candidate"]) == [0.0] * 3 + [1.0] * 7
    assert frame["api_cost_usd"].tolist() == pytest.approx([0.001 * (i + 1) for i in range(10)])
    # -inf (invalid only), the nine values above the lowest, +inf: routed 0, 1, ..., 10
    assert curve["routed"].tolist() == list(range(11))
    assert curve["routed_share"].tolist() == pytest.approx([k / 10 for k in range(11)])
    assert curve["threshold"].iloc[0] == -math.inf and curve["threshold"].iloc[-1] == math.inf
    assert curve["quality"].tolist() == pytest.approx([0.7, 0.8, 0.9] + [1.0] * 8)
    assert curve["difference"].tolist() == pytest.approx([-0.3, -0.2, -0.1] + [0.0] * 8)
    three = _row(curve, 3)
    assert three["threshold"] == pytest.approx(-0.7)  # route when logprob_mean < -0.7: c0, c1, c2
    assert (three["quality"], three["routed_share"]) == (1.0, 0.3)
    # no loss left on 10 cases: the bounds of the module doc's quadratic, +-0.2847
    assert (three["lower_bound"], three["upper_bound"]) == pytest.approx((-0.28474, 0.28474), abs=1e-5)
    assert three["api_cost_per_case"] == pytest.approx((0.001 + 0.002 + 0.003) / 10)
    # every case routed: the incumbent's mean cost, 0.055 / 10 cases... per case 0.0055
    assert curve["api_cost_per_case"].iloc[-1] == pytest.approx(0.0055)
    # Wilson 95% for 7/10, by hand: centre 0.89208 / 1.38416, half 1.96 x sqrt(0.021 + 0.009604) / 1.38416
    assert (curve["quality_low"].iloc[0], curve["quality_high"].iloc[0]) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert curve["quality_low"].iloc[3] == pytest.approx(0.7225, abs=1e-4) and curve["quality_high"].iloc[3] == 1.0
    # Z = 0, 0.663, 1.326 with 3, 2, 1 failures left: inconclusive; 1.989 with none: pass
    assert curve["verdict"].tolist() == ["inconclusive"] * 3 + ["pass"] * 8
    assert curve["within_margin"].tolist() == [False, False, False] + [True] * 8
    rec = recommend(curve)
    assert rec["routed"] == 3 and rec["threshold"] == pytest.approx(-0.7)
    assert not rec["routes_everything"] and not rec["routes_invalid_only"]
    assert oracle(frame) == pytest.approx({"routed": 3, "routed_share": 0.3, "quality": 1.0,
                                           "api_cost_per_case": 0.0006})


def test_bounds_come_from_one_batched_score_test_and_match_the_gate(tmp_path, monkeypatch):
    calls = []
    real = paired.bounds_batch

    def counting(values, counts, confidence):
        calls.append(np.atleast_2d(counts).shape)
        return real(values, counts, confidence)

    monkeypatch.setattr(paired, "bounds_batch", counting)  # the real function, counted
    policy = GateSpec(margin=0.35)
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _store_run(store, MAIN)
        curve = sweep(cascade_frame(store, run_id), "logprob_mean", policy)
        assert calls == [(11, 3)]  # one call: 11 thresholds over the support -1, 0, +1
        verdict = gate_run(store, run_id, policy)
    for k in range(11):
        # routing the k least sure: the difference is -1 on the failures c0..c2 not routed
        d = np.array([-1.0 if k <= i < 3 else 0.0 for i in range(10)])
        row = _row(curve, k)
        assert (row["lower_bound"], row["upper_bound"]) == pytest.approx(paired.bounds(d, 0.95))
        b = max(3 - k, 0)
        assert row["verdict"] == ("pass" if _z(10, b, 0.35) > Z95 else "inconclusive")
    # the cascade that routes nothing is the candidate alone: the gate's own verdict on the same run
    check = next(c for c in verdict.checks if c.name == "non-inferiority")
    assert curve["verdict"].iloc[0] == check.outcome == "inconclusive"
    assert (curve["lower_bound"].iloc[0], curve["upper_bound"].iloc[0]) == pytest.approx(
        (verdict.stats["lower_bound"], verdict.stats["upper_bound"]))


def test_the_hand_formula_of_the_module_doc():
    for n, b, m in [(10, 3, 0.35), (10, 2, 0.35), (10, 1, 0.35), (10, 0, 0.35), (10, 3, 0.7), (10, 2, 0.55),
                    (10, 1, 0.45), (45, 1, 0.1), (36, 0, 0.1), (36, 1, 0.1), (20, 0, 0.02)]:
        values, counts = paired.support(np.r_[-np.ones(b), np.zeros(n - b)])
        assert float(paired.score_z(values, counts[None, :], -m)[0]) == pytest.approx(_z(n, b, m)), (n, b, m)
    assert [round(_z(10, b, 0.35), 3) for b in (3, 2, 1, 0)] == [0.0, 0.663, 1.326, 1.989]
    assert (round(_z(10, 3, 0.7), 3), round(_z(10, 2, 0.55), 3), round(_z(10, 3, 0.55), 3)) == (2.415, 1.907, 1.271)
    assert (round(_z(10, 1, 0.45), 3), round(_z(10, 2, 0.45), 3)) == (1.907, 1.271)
    n, z2 = 10, Z95**2
    a, b = n * n + z2 * n, n + z2 * n
    root = (b + math.sqrt(b * b - a)) / (2 * a)
    assert round(root, 4) == 0.2847 and paired.bounds(np.zeros(10), 0.95) == pytest.approx((-root, root))


@pytest.mark.parametrize(("margin", "routed", "cost"), [
    (0.7, 0, 0.0),        # route nothing: 3 failures left, Z = 2.415
    (0.55, 1, 0.0001),    # 2 left: 1.907 passes, 3 left: 1.271 does not
    (0.45, 2, 0.0003),    # 1 left: 1.907; 2 left: 1.271
    (0.35, 3, 0.0006),    # none left: 1.989; 1 left: 1.326
])
def test_the_margin_decides_how_much_is_routed(tmp_path, margin, routed, cost):
    _, curve = _curve(tmp_path, MAIN, GateSpec(margin=margin))
    rec = recommend(curve)
    assert rec["routed"] == routed and rec["api_cost_per_case"] == pytest.approx(cost)
    assert rec["routes_invalid_only"] == (routed == 0)
    assert curve["within_margin"].tolist() == [k >= routed for k in range(11)]


def test_a_small_run_cannot_vouch_for_a_small_margin(tmp_path):
    # 10 cases: not even routing every case (no loss: Z = (0.5 - 0.5) / ... = 0 at 0.05) is within 0.05
    _, curve = _curve(tmp_path, MAIN, GateSpec(margin=0.05))
    assert set(curve["verdict"]) == {"inconclusive"} and recommend(curve) is None
    # 20 cases that all agree: Z = max(0.4 - 0.5, 0) / ... = 0 at 0.02, inconclusive at every threshold; at 0.2
    # Z = 3.5 / 1.789 = 1.957, within the margin (the bootstrap this replaced gave [0, 0] and passed any margin)
    agree = [_case(i, cand=True) for i in range(20)]
    agree = [{**c, "id": f"c{i:02d}"} for i, c in enumerate(agree)]
    _, curve = _curve(tmp_path / "b", agree, GateSpec(margin=0.02))
    assert not curve["within_margin"].any() and recommend(curve) is None
    assert round(_z(20, 0, 0.2), 3) == 1.957
    _, curve = _curve(tmp_path / "c", agree, GateSpec(margin=0.2))
    assert curve["within_margin"].all() and recommend(curve)["routes_invalid_only"]


def test_invalid_and_failed_answers_are_routed_at_every_threshold(tmp_path):
    cases = [*MAIN,
             _case(10, lp=-0.01, cand=False, valid=False),  # the surest answer, but not valid JSON
             _case(11, lp=None, cand=False, error="timeout"),  # the call failed
             _case(12, lp=None, cand=True)]  # valid, but the server gave no logprobs: least sure
    frame, curve = _curve(tmp_path, cases, GateSpec(margin=0.05))
    by_id = frame.set_index("case_id")
    assert by_id["valid"].to_dict() == {**{f"c{i}": True for i in range(10)}, "c10": False, "c11": False,
                                        "c12": True}
    assert not by_id.loc["c11", "answered"] and math.isnan(by_id.loc["c12", "logprob_mean"])
    # thresholds -inf, -1.0 (c12 only), -0.9 (c12, c0), ..., -0.1, +inf; the two invalid ones always on top
    assert curve["routed"].tolist() == [2 + k for k in range(12)]
    assert curve["threshold"].iloc[1] == pytest.approx(-1.0)
    for threshold, count in zip(curve["threshold"], curve["routed"], strict=True):
        routed = route(frame, "logprob_mean", threshold)
        assert routed["c10"] and routed["c11"] and routed.sum() == count
    assert not route(frame, "logprob_mean", -math.inf)["c12"] and route(frame, "logprob_mean", -1.0)["c12"]
    # nothing but the invalid ones routed: 7 + 1 candidate passes (c3..c9, c12) + 2 incumbent passes, of 13
    assert curve["quality"].iloc[0] == pytest.approx(10 / 13)
    assert curve["api_cost_per_case"].iloc[0] == pytest.approx((0.011 + 0.012) / 13)
    assert oracle(frame)["routed"] == 5  # c10, c11 and the three failures


def test_unknown_incumbent_costs_are_filled_with_the_mean_known_one(tmp_path):
    cases = [_case(i, cost=None) if i == 1 else _case(i) for i in range(10)]
    _, curve = _curve(tmp_path, cases, GateSpec(margin=0.35))
    fill = (0.055 - 0.002) / 9
    assert _row(curve, 3)["api_cost_per_case"] == pytest.approx((0.001 + fill + 0.003) / 10)
    assert curve["api_cost_per_case"].iloc[-1] == pytest.approx((0.053 + fill) / 10)
    nothing_known = [_case(i, cost=None) for i in range(10)]
    frame, curve = _curve(tmp_path / "b", nothing_known, GateSpec(margin=0.35))
    assert curve["api_cost_per_case"].iloc[0] == 0.0 and curve["api_cost_per_case"].iloc[1:].isna().all()
    rec = recommend(curve)  # by routed share when the costs are unknown
    assert rec["routed"] == 3 and math.isnan(rec["api_cost_per_case"])
    assert "API cost unknown" in cascade_text(curve, rec, "logprob_mean")
    cross = crossfit(frame, "logprob_mean", GateSpec(margin=0.35))
    assert math.isnan(cross.api_cost_per_case) and math.isnan(cross.savings) and "API cost unknown" in cross.summary()


def test_a_continuous_metric(tmp_path):
    totals = [(0.2, 1.0), (0.6, 0.8), (1.0, 0.9), (0.9, 1.0)]  # (candidate, incumbent) field.total
    cases = [_case(i, lp=[-2.0, -1.0, -0.5, -0.1][i], cand=c == 1.0, inc=t == 1.0, cand_total=c, inc_total=t)
             for i, (c, t) in enumerate(totals)]
    frame, curve = _curve(tmp_path, cases, GateSpec(margin=0.05), metric="field.total")
    assert frame["candidate"].tolist() == [0.2, 0.6, 1.0, 0.9] and frame["incumbent"].tolist() == [1, 0.8, 0.9, 1]
    # routing the k least sure: (1.0+0.6+1.0+0.9)/4, (1.0+0.8+1.0+0.9)/4, (1.0+0.8+0.9+0.9)/4, all incumbent
    assert curve["quality"].tolist() == pytest.approx([0.675, 0.875, 0.925, 0.9, 0.925])
    assert curve["difference"].tolist() == pytest.approx([-0.25, -0.05, 0.0, -0.025, 0.0])
    # Student's t for 0.2, 0.6, 1.0, 0.9: sd = sqrt(0.3875 / 3), half = 3.182446 x sd / 2; clipped to 1
    assert curve["quality_low"].iloc[0] == pytest.approx(0.675 - 3.182446 * math.sqrt(0.3875 / 3) / 2, abs=1e-5)
    assert curve["quality_high"].iloc[0] == 1.0
    with Store(tmp_path / "s.duckdb") as store, pytest.raises(HarnessError, match=r"gate\.metric 'field\.nope'"):
        cascade_frame(store, store.latest_run(), metric="field.nope")


def test_when_only_the_api_keeps_quality(tmp_path):
    hopeless = [_case(i, cand=False) for i in range(10)]
    _, curve = _curve(tmp_path, hopeless, GateSpec(margin=0.35))  # 1 failure left: Z = 1.326
    rec = recommend(curve)
    assert rec["routes_everything"] and rec["routed_share"] == 1.0 and rec["difference"] == 0.0
    assert "stay on the API" in cascade_text(curve, rec, "logprob_mean")
    # margin 0: even the incumbent itself is not strictly above -0
    _, curve = _curve(tmp_path / "b", hopeless, GateSpec(margin=0.0))
    assert recommend(curve) is None
    assert "no threshold keeps quality" in cascade_text(curve, None, "logprob_mean")


def test_choose_signal():
    def frame(**columns: list) -> pd.DataFrame:
        valid = columns.pop("valid", [True] * 10)
        out = pd.DataFrame({"valid": valid})
        for signal in ("logprob_mean", "margin_mean", "logprob_min", "agreement"):
            out[signal] = columns.get(signal, [np.nan] * len(valid))
        return out

    nine = [np.nan] + [-0.5] * 9
    eight = [np.nan] * 2 + [-0.5] * 8
    assert choose_signal(frame(logprob_mean=nine)) == "logprob_mean"  # 90% is enough
    assert choose_signal(frame(logprob_mean=eight, logprob_min=eight, agreement=[1.0] * 10)) == "agreement"
    assert choose_signal(frame(margin_mean=[0.3] * 10, logprob_min=[-1.0] * 10)) == "margin_mean"
    assert choose_signal(frame()) == "valid"
    # values missing only on invalid answers do not count against a signal
    assert choose_signal(frame(valid=[False] * 2 + [True] * 8, logprob_mean=eight)) == "logprob_mean"
    assert choose_signal(frame(logprob_min=[-1.0] + [np.nan] * 9), "logprob_min") == "logprob_min"
    with pytest.raises(HarnessError, match=r"cascade signal 'margin_mean': the run has no values of it "
                                           r"\(it has: logprob_mean, agreement, valid\)"):
        choose_signal(frame(logprob_mean=nine, agreement=[1.0] * 10), "margin_mean")
    with pytest.raises(HarnessError, match="unknown cascade signal 'entropy'"):
        choose_signal(frame(), "entropy")
    assert SIGNALS[-1] == "valid"


def test_signals_from_a_stored_run(tmp_path):
    agreeing = [_case(i, lp=None, agreement=[0.2, 0.4, 0.6, 0.8, 1.0][i % 5]) for i in range(10)]
    with Store(tmp_path / "s.duckdb") as store:
        frame = cascade_frame(store, _store_run(store, agreeing))
        main = cascade_frame(store, _store_run(store, MAIN))
    assert choose_signal(main) == "logprob_mean" and choose_signal(frame) == "agreement"
    assert main["logprob_min"].tolist() == pytest.approx([-2 * (10 - i) / 10 for i in range(10)])
    # five distinct agreement values: -inf, 0.4, 0.6, 0.8, 1.0, +inf
    curve = sweep(frame, "agreement", GateSpec(margin=0.05))
    assert curve["routed"].tolist() == [0, 2, 4, 6, 8, 10]
    # validity alone: the cascade that routes nothing but invalid answers, and everything
    assert sweep(main, "valid", GateSpec())["routed"].tolist() == [0, 10]


def test_the_providers_must_have_run(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        run_id = _store_run(store, MAIN, incumbent="skipped")
        with pytest.raises(HarnessError, match=r"has no incumbent answers to compare with "
                                               r"\(\S+ was skipped: OPENAI_API_KEY is not set\)"):
            cascade_frame(store, run_id)
        with pytest.raises(HarnessError, match=r"has no answers of 'local:other' \(ran: local:m\)"):
            cascade_frame(store, run_id, candidate="local:other")
        store.con.execute("UPDATE run_providers SET status = 'skipped' WHERE provider = ?", [CAND])
        with pytest.raises(HarnessError, match="has no candidate that ran"):
            cascade_frame(store, run_id)


def test_the_text_table_keeps_the_recommended_row_and_the_ends(tmp_path):
    # 40 cases, the candidate fails the 17 least sure: 41 thresholds, routing 17 is recommended at a margin of
    # 0.1 (none left: Z = 3.5 / 1.897 = 1.845; one left: 2.5 / 1.897 = 1.318)
    cases = [_case(i, lp=-(40 - i) / 40, cand=i >= 17, cost=0.002) for i in range(40)]
    cases = [{**c, "id": f"c{i:02d}"} for i, c in enumerate(cases)]
    frame, curve = _curve(tmp_path, cases, GateSpec(margin=0.1))
    rec = recommend(curve)
    assert len(curve) == 41 and rec["routed"] == 17
    text = cascade_text(curve, rec, "logprob_mean", oracle(frame))
    lines = text.splitlines()
    rows = [line for line in lines[4:] if line[2:14].strip() and not line.startswith("recommended")]
    table = [line for line in rows if "(oracle)" not in line]
    assert len(table) <= 15
    assert "invalid only" in table[0] and "everything" in table[-1]
    (marked,) = [line for line in table if line.startswith("*")]
    threshold = -(40 - 17) / 40
    assert f"< {threshold:.4g}" in marked and "42.5%" in marked and "1.000" in marked and " pass " in marked
    # the API's cost of 17 cases of 40 at $0.002: $0.85 per 1,000 cases
    assert marked.rstrip().endswith("0.85")
    assert lines[-1] == (f"recommended: * route to the API when logprob_mean < {threshold:.4g}: 42.5% of cases, "
                         "quality 1.000 (incumbent 1.000), API $0.85 per 1k cases (in-sample: chosen and judged on "
                         "the same cases)")
    assert any("(oracle)" in line and "42.5%" in line for line in rows)


def test_an_empty_frame(tmp_path):
    frame = pd.DataFrame({"case_id": [], "valid": [], "candidate": [], "incumbent": [], "api_cost_usd": [],
                          "logprob_mean": []})
    curve = sweep(frame, "logprob_mean", GateSpec())
    assert curve.empty and recommend(curve) is None
    assert list(curve.columns) == list(cascade.CURVE_COLUMNS)
    cross = crossfit(frame, "logprob_mean", GateSpec())
    assert cross.folds == 0 and not cross.holds and "0 case(s) cannot be cross-fitted" in cross.too_thin


def test_a_big_run_sweeps_a_bounded_number_of_thresholds(tmp_path, monkeypatch):
    # 500 distinct confidences: the sweep keeps MAX_THRESHOLDS of them (evenly spaced quantiles, sorted index
    # floor(j x 499 / 50)) plus -inf/+inf. The candidate fails the 100 least sure. j = 9 routes 89 (11 failures
    # left: -0.022, outside the 0.02 margin); j = 10 routes 99 (1 failure left: 0.998) and is the pick.
    monkeypatch.setattr(cascade, "MAX_THRESHOLDS", 51)
    cases = [_case(i, lp=-(500 - i) / 500, cand=i >= 100) for i in range(500)]
    _, curve = _curve(tmp_path, cases, GateSpec(margin=0.02))
    assert len(curve) <= 51 + 2
    assert curve["routed"].iloc[0] == 0 and curve["routed"].iloc[-1] == 500
    rec = recommend(curve)
    assert rec["routed"] == 99 and rec["quality"] == pytest.approx(0.998)
    assert _row(curve, 89)["quality"] == pytest.approx(0.978) and not _row(curve, 89)["within_margin"]


def _one_failure(n: int = 45) -> list[dict[str, Any]]:
    """n cases c00.., the candidate's confidence rising with the index, wrong only on c00 (the least sure)."""
    cases = [_case(i, lp=-(n - i) / n, cand=i != 0, cost=0.001) for i in range(n)]
    return [{**c, "id": f"c{i:02d}"} for i, c in enumerate(cases)]


def test_cross_fitting_judges_each_case_by_a_threshold_not_chosen_on_it(tmp_path):
    policy = GateSpec(margin=0.1)
    frame, curve = _curve(tmp_path, _one_failure(), policy)
    rec = recommend(curve)
    # in-sample the pick looks perfect: route c00 alone (below c01's confidence) and the hybrid never loses
    # (Z = 4 / 2.012 = 1.988 on 45 cases, pass)
    assert (rec["routed"], rec["quality"], rec["verdict"]) == (1, 1.0, "pass")
    assert rec["threshold"] == pytest.approx(-44 / 45)
    cross = crossfit(frame, "logprob_mean", policy)
    fold = cross.fold
    assert cross.folds == 5 and sorted(np.bincount(fold)) == [9] * 5  # every case in exactly one fold
    assert list(cross.routed.index) == list(frame["case_id"]) and cross.cases == 45
    # each fold's threshold is recommend's pick on the other folds' cases alone, and routes its own cases
    for j, threshold in enumerate(cross.thresholds):
        train = frame[fold != j].reset_index(drop=True)
        train.attrs = frame.attrs
        pick = recommend(sweep(train, "logprob_mean", policy))
        assert threshold == (None if pick is None or pick["routes_everything"] else pick["threshold"])
        held = frame[fold == j]
        expected = route(held, "logprob_mean", math.inf if threshold is None else threshold)
        assert (cross.routed[held["case_id"]].to_numpy() == expected.to_numpy()).all()
    # by hand: the fold holding c00 learns from 36 cases the candidate gets right (Z = 3.1 / 1.8 = 1.722, pass):
    # it routes nothing, so c00 is judged by the candidate's wrong answer. Every other fold has c00 among its 36
    # (one loss: Z = 2.1 / 1.8 = 1.167), so it routes c00 and nothing more: its threshold is the confidence of
    # its first training case after c00, and it routes its own cases below that.
    home = fold[0]
    assert cross.thresholds[home] == -math.inf and not cross.routed["c00"]
    routed = set()
    for j in set(range(5)) - {home}:
        first = min(i for i in range(1, 45) if fold[i] != j)
        assert cross.thresholds[j] == pytest.approx(-(45 - first) / 45)
        routed |= {i for i in range(1, first) if fold[i] == j}
    assert set(np.flatnonzero(cross.routed.to_numpy())) == routed and cross.routed_count == len(routed)
    assert (round(_z(36, 0, 0.1), 3), round(_z(36, 1, 0.1), 3)) == (1.722, 1.167)
    # whatever the folds, the cross-fitted hybrid loses c00: quality 44/45, below the in-sample 1.0
    assert cross.quality == pytest.approx(44 / 45) and cross.difference == pytest.approx(-1 / 45)
    assert (cross.quality_low, cross.quality_high) == pytest.approx(wilson_interval(44, 45))
    assert (cross.routed_low, cross.routed_high) == pytest.approx(wilson_interval(len(routed), 45))
    # one loss in 45: Z = 3 / 2.012 = 1.491, inconclusive: too thin to recommend the threshold
    assert round(_z(45, 1, 0.1), 3) == 1.491 and cross.verdict == "inconclusive" and not cross.holds
    needed = paired.cases_needed(np.r_[-1.0, np.zeros(44)], 0.1, 0.95)
    assert cross.cases_needed == needed and needed > 45
    assert cross.too_thin.endswith(f"about {needed:,} cases would show it with 80% power if the difference and "
                                   "disagreement stay as observed")
    text = cascade_text(curve, rec, "logprob_mean", cross=cross).splitlines()
    assert text[-3].startswith("too thin to recommend a threshold: the cross-fitted hybrid - incumbent is -0.022")
    assert text[-2] == ("  in-sample pick: * route to the API when logprob_mean < -0.9778 (threshold chosen on all "
                        "45 cases)")
    assert text[-1].startswith(f"  cross-fitted (5 folds): {len(routed) / 45:.1%} routed")
    assert "quality 0.978" in text[-1] and text[-1].endswith(": inconclusive")


def test_cross_fitting_is_deterministic_under_the_seed(tmp_path):
    frame, _ = _curve(tmp_path, _one_failure(), GateSpec(margin=0.1))
    first = crossfit(frame, "logprob_mean", GateSpec(margin=0.1))
    again = crossfit(frame, "logprob_mean", GateSpec(margin=0.1))
    assert (first.fold == again.fold).all() and first.thresholds == again.thresholds
    assert first.routed.equals(again.routed) and first.to_dict() == again.to_dict()
    assert (first.fold == assign_folds(45, 5, 0)).all()
    other = crossfit(frame, "logprob_mean", GateSpec(margin=0.1, seed=7))
    assert (other.fold != first.fold).any() and (other.fold == assign_folds(45, 5, 7)).all()
    assert sorted(np.bincount(other.fold)) == [9] * 5 and other.seed == 7
    assert other.quality == first.quality == pytest.approx(44 / 45)  # the hand argument holds for any folds
    # fewer cases than folds: one fold a case; a single case cannot be cross-fitted; nor can one fold
    assert sorted(assign_folds(3, 5, 0)) == [0, 1, 2]
    assert crossfit(frame.iloc[:3], "logprob_mean", GateSpec(margin=0.1)).folds == 3
    single = crossfit(frame.iloc[:1], "logprob_mean", GateSpec(margin=0.1))
    assert single.folds == 0 and "1 case(s) cannot be cross-fitted" in single.too_thin
    assert single.summary().startswith("cross-fitted: not possible")
    with pytest.raises(HarnessError, match="at least 2 folds"):
        crossfit(frame, "logprob_mean", GateSpec(margin=0.1), folds=1)


def test_a_small_run_is_too_thin_to_recommend_a_threshold(tmp_path):
    # 10 cases that all agree, at a margin of 0.3: Z = 2.5 / 1.449 = 1.725 on all 10 (pass: the candidate alone
    # will do), but each fold learns from 8, where Z = 1.9 / 1.296 = 1.466: no fold finds a threshold
    policy = GateSpec(margin=0.3)
    frame, curve = _curve(tmp_path, [_case(i, cand=True) for i in range(10)], policy)
    assert (round(_z(10, 0, 0.3), 3), round(_z(8, 0, 0.3), 3)) == (1.725, 1.466)
    rec = recommend(curve)
    assert rec["routes_invalid_only"] and rec["verdict"] == "pass"
    cross = crossfit(frame, "logprob_mean", policy)
    assert cross.thresholds == [None] * 5 and cross.folds_without_threshold == 5 and cross.routed.all()
    assert cross.verdict == "pass" and not cross.holds  # the API alone, judged against itself
    assert cross.savings == 0.0 and cross.api_cost_per_case == pytest.approx(0.0055)
    needed = math.ceil(paired.cases_needed(np.zeros(10), 0.3, 0.95) * 5 / 4)
    assert cross.cases_needed == needed
    assert cross.too_thin == ("in 5 of 5 folds no threshold short of routing every case kept quality within 0.300 "
                              f"on the other folds' cases; about {needed:,} cases would let each fold find one")
    text = cascade_text(curve, rec, "logprob_mean", cross=cross)
    assert f"too thin to recommend a threshold: {cross.too_thin}" in text
    assert text.endswith("5 of 5 folds found no threshold within the margin on their other folds' cases and routed "
                         "all their cases to the API")
    data = cross.to_dict()
    assert data["fold_rules"] == ["everything (no threshold)"] * 5 and data["too_thin"] == cross.too_thin
    assert data["routed_cases"] == [f"c{i}" for i in range(10)]
