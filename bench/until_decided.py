"""How many cases `harness run --until-decided` sends before it stops, and how often each verdict comes out.

`python -m bench.until_decided [--paths 2000] [--seed 2024]` simulates suites of a pass/fail metric (each case a
regression, a tie or a win of the candidate over the incumbent) in which the candidate's true mean difference is 0
(equal; 5% or 30% of cases discordant), -margin (exactly at the margin), -2 x margin, or -margin - 0.10, for
margins 0.02 and 0.05 at 95%. Each path is judged after every case by the anytime-valid stop rule
(`harness.analysis.anytime.paired_crossing_times`) and stops at its first verdict, or runs out at the suite's size
(100, 500 or 2,000 cases: the first cases of the same 2,000-case paths). It prints a Markdown table: the share of
runs ending pass, fail or inconclusive, the mean and median number of cases sent, the share of cases saved against
sending them all, and, for comparison, the fixed-sample gate's verdicts (`harness.analysis.paired.verdicts`) on
all the suite's cases. Seeded: the same arguments print the same table (docs/ci.md, "Stopping when decided").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from harness.analysis import paired
from harness.analysis.anytime import paired_crossing_times

SIZES = (100, 500, 2000)
MARGINS = (0.02, 0.05)
CONFIDENCE = 0.95
# (label, true mean difference as (multiple of the margin, extra), share of cases that differ)
SCENARIOS = (
    ("equal", (0, 0.0), 0.05),
    ("equal", (0, 0.0), 0.30),
    ("at the margin", (-1, 0.0), 0.05),
    ("at the margin", (-1, 0.0), 0.30),
    ("2 x margin worse", (-2, 0.0), 0.30),
    ("margin + 10 points worse", (-1, -0.10), 0.30),
)


def simulate(rng: np.random.Generator, paths: int, steps: int, difference: float, discordance: float) -> np.ndarray:
    """Differences -1, 0, +1 with mean `difference`, `discordance` of cases differing (at least |difference|)."""
    psi = max(discordance, abs(difference))
    wins, regressions = (psi + difference) / 2, (psi - difference) / 2
    u = rng.random((paths, steps))
    return np.where(u < regressions, -1.0, np.where(u < regressions + wins, 1.0, 0.0))


def rows(paths: int, seed: int) -> list[dict]:
    """One row per margin, scenario and suite size."""
    out = []
    for i, margin in enumerate(MARGINS):
        for j, (label, (times, extra), discordance) in enumerate(SCENARIOS):
            difference = times * margin + extra
            diffs = simulate(np.random.default_rng([seed, i, j]), paths, max(SIZES), difference, discordance)
            crossed = paired_crossing_times(diffs, margin, CONFIDENCE)
            for n in SIZES:
                decided = (crossed[:, 0] > 0) & (crossed[:, 0] <= n)
                used = np.where(decided, crossed[:, 0], n)
                sign = np.where(decided, crossed[:, 1], 0)
                counts = np.stack([(diffs[:, :n] == v).sum(axis=1) for v in (-1.0, 0.0, 1.0)], axis=1)
                fixed = paired.verdicts(np.array([-1.0, 0.0, 1.0]), counts.astype(float), margin, CONFIDENCE)
                out.append(
                    {
                        "margin": margin,
                        "label": label,
                        "difference": difference,
                        "discordance": max(discordance, abs(difference)),
                        "cases": n,
                        "pass": float(np.mean(sign == 1)),
                        "fail": float(np.mean(sign == -1)),
                        "inconclusive": float(np.mean(sign == 0)),
                        "mean_used": float(used.mean()),
                        "median_used": float(np.median(used)),
                        "saved": float(1 - used.mean() / n),
                        "fixed_pass": float(np.mean(fixed == paired.PASS)),
                        "fixed_fail": float(np.mean(fixed == paired.FAIL)),
                    }
                )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| margin | true difference | discordant | cases | pass | fail | inconclusive | cases sent: mean "
        "(median) | saved | fixed-sample gate: pass / fail |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {100 * r['margin']:g} pts | {r['label']} ({100 * r['difference']:+g} pts) | "
            f"{100 * r['discordance']:g}% | {r['cases']:,} | {100 * r['pass']:.1f}% | {100 * r['fail']:.1f}% | "
            f"{100 * r['inconclusive']:.1f}% | {r['mean_used']:,.0f} ({r['median_used']:,.0f}) | "
            f"{100 * r['saved']:.0f}% | {100 * r['fixed_pass']:.1f}% / {100 * r['fixed_fail']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=2000, help="simulated runs per row (default 2000)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    table = rows(args.paths, args.seed)
    print(markdown(table))
    print(f"\n{args.paths:,} simulated runs per row, seed {args.seed}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
