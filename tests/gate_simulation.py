"""The gate's error rates over the suite sizes and disagreement rates users meet, computed with the gate's own test
(`harness.paired.verdicts`). Run `python tests/gate_simulation.py` to print the tables of docs/ci.md.

Pass/fail metrics are computed exactly: a suite's verdict depends only on its counts of wins b and regressions c,
so every table (b, c) of n cases is decided once and weighted by its trinomial probability (no Monte Carlo error).
A continuous metric (a per-case score in [0, 1] such as `field.total`, differences in steps of 0.25) is simulated.

The grid: cases {10, 20, 50, 100, 300, 1,000}; disagreement (the share of cases on which the two sides differ)
{0.5%, 2%, 5%, 15%, 40%}; true difference {-2, -1, 0, +1} x margin. A difference larger than the disagreement
allows (e.g. -0.04 with 0.5% of cases differing) is impossible: there the disagreement is raised to the least that
carries the difference (every differing case one way).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.special import gammaln, xlogy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.analysis import paired

SIZES = (10, 20, 50, 100, 300, 1000)
DISAGREEMENT = (0.005, 0.02, 0.05, 0.15, 0.40)
DIFFERENCES = (-2, -1, 0, 1)  # x margin
MARGIN, CONFIDENCE = 0.02, 0.95
STEPS = np.array([0.25, 0.5, 0.75, 1.0])  # magnitudes of a continuous metric's differences
SUITES = 2000  # simulated suites per cell (continuous metric)


def _tables(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (b, c) with b + c <= n, and the gate's verdict on each."""
    grid_b, grid_c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = grid_b + grid_c <= n
    b, c = grid_b[keep].astype(float), grid_c[keep].astype(float)
    counts = np.stack([c, n - b - c, b], axis=1)  # at the values -1, 0, +1
    return b, c, paired.verdicts(np.array([-1.0, 0.0, 1.0]), counts, MARGIN, CONFIDENCE)


def exact_rates(n: int, disagreement: float, difference: float, decided: tuple | None = None) -> dict[str, float]:
    """Exact shares of pass, fail and inconclusive for a pass/fail metric on `n` cases, when the sides differ on
    `disagreement` of the cases and the candidate's true difference is `difference`."""
    b, c, verdict = decided if decided is not None else _tables(n)
    psi = max(disagreement, abs(difference))
    wins, regressions = (psi + difference) / 2, (psi - difference) / 2
    log_p = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(n - b - c + 1)
             + xlogy(b, wins) + xlogy(c, regressions) + xlogy(n - b - c, 1 - psi))
    p = np.exp(log_p)
    return {v: float(p[verdict == v].sum()) for v in (paired.PASS, paired.FAIL, paired.INCONCLUSIVE)}


def simulated_rates(rng: np.random.Generator, n: int, disagreement: float, difference: float,
                    suites: int = SUITES) -> dict[str, float]:
    """Simulated shares of each verdict for a continuous metric: a differing case differs by 0.25, 0.5, 0.75 or 1
    (equally likely), up or down with the odds that give the mean `difference`."""
    psi = max(disagreement, abs(difference) / STEPS.mean())
    tilt = difference / (psi * STEPS.mean())
    up, down = psi * (1 + tilt) / 2, psi * (1 - tilt) / 2
    values = np.concatenate([-STEPS[::-1], [0.0], STEPS])
    probs = np.concatenate([np.full(4, down / 4), [1 - psi], np.full(4, up / 4)])
    counts = rng.multinomial(n, probs, size=suites).astype(float)
    verdict = paired.verdicts(values, counts, MARGIN, CONFIDENCE)
    return {v: float(np.mean(verdict == v)) for v in (paired.PASS, paired.FAIL, paired.INCONCLUSIVE)}


TWO_POINT_SHARES = tuple(np.linspace(0.03, 0.6, 12))


def two_point_rates(highs=(1.0, 0.9, 0.5), shares=TWO_POINT_SHARES,
                    sizes=(5, 7, 10, 20, 50, 100, 300)) -> list[tuple[float, float, float, int]]:
    """Exact pass rates at the margin of skewed score differences: d = `high` with probability p, else the loss
    that puts the mean at -margin (rare large wins among frequent moderate losses, the shape that strains a
    normal approximation most). Each suite's verdict depends only on how many wins it has, so every count is
    decided once and weighted by its binomial probability. Returns (pass rate, high, p, n) for every cell."""
    from scipy import stats

    out = []
    for high in highs:
        for p in shares:
            low = (-MARGIN - high * p) / (1 - p)
            if low < -1:
                continue
            values = np.unique([-1.0, 1.0, high, low])
            for n in sizes:
                wins = np.arange(n + 1)
                counts = np.zeros((n + 1, len(values)))
                counts[:, np.searchsorted(values, high)] += wins
                counts[:, np.searchsorted(values, low)] += n - wins
                passed = paired.verdicts(values, counts, MARGIN, CONFIDENCE) == paired.PASS
                out.append((float(stats.binom.pmf(wins, n, p)[passed].sum()), high, float(p), n))
    return out


def grid(kind: str, seed: int = 0) -> dict[tuple[int, float, int], dict[str, float]]:
    """(cases, disagreement, difference in margins) -> shares of each verdict, for `kind` `pass_fail` (exact)
    or `continuous` (simulated, seeded)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in SIZES:
        decided = _tables(n) if kind == "pass_fail" else None
        for psi in DISAGREEMENT:
            for k in DIFFERENCES:
                out[(n, psi, k)] = (exact_rates(n, psi, k * MARGIN, decided) if kind == "pass_fail"
                                    else simulated_rates(rng, n, psi, k * MARGIN))
    return out


def markdown(kind: str, table: dict[tuple[int, float, int], dict[str, float]]) -> str:
    """The table for docs/ci.md: per true difference, the share passed (and failed) by cases x disagreement."""
    lines = []
    for k in DIFFERENCES:
        lines += [f"\n{kind}, true difference {k:+d} x margin: pass % / fail %\n",
                  "| cases | " + " | ".join(f"{p:.1%} differ" for p in DISAGREEMENT) + " |",
                  "|---|" + "---|" * len(DISAGREEMENT)]
        for n in SIZES:
            cells = [f"{100 * table[(n, p, k)]['pass']:.1f} / {100 * table[(n, p, k)]['fail']:.1f}"
                     for p in DISAGREEMENT]
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for kind in ("pass_fail", "continuous"):
        print(markdown(kind, grid(kind)))
