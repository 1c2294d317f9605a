"""A run's spending ceiling (`harness run --max-cost`, `[budget] max_cost`): checked before the run, kept during it.

`plan_spend` turns the ceiling into a `Ledger` shared by every paid provider and a `Spend` per provider (its price
and output bound), refusing up front what cannot be kept: a paid provider with no price (an unknown price cannot be
capped) unless unpriced calls are allowed, a provider whose output is not bounded by `max_tokens`, and a ceiling
below the worst case of the first call left to make. During the run `Resilient` books each attempt's worst case
before starting it and settles it at what was billed.
"""

from __future__ import annotations

from harness.errors import BudgetError
from harness.pricing import PricingTable
from harness.providers.base import Request
from harness.providers.plan import ProviderPlan
from harness.providers.spend import BILLED_KINDS, Ledger, Spend


def plan_spend(
    plans: list[ProviderPlan],
    pricing: PricingTable,
    ceiling: float,
    first_requests: dict[str, Request],
    *,
    spent: float = 0.0,
    allow_unpriced: bool = False,
) -> tuple[Ledger, dict[str, Spend]]:
    """The ledger of a run with `ceiling` USD (`spent` of it already billed, by a resumed run) and a `Spend` for each
    ready paid plan with calls to make: `first_requests` holds, per provider, the first request it will send (its
    worst case must fit under the ceiling; its `max_tokens` bounds every answer). Judges are plans like the others.
    Raises BudgetError naming the provider and the fix."""
    if not ceiling >= 0:
        raise BudgetError(f"--max-cost must be 0 or more USD, not {ceiling}")
    ledger = Ledger(ceiling=ceiling, spent=spent)
    spends: dict[str, Spend] = {}
    for plan in plans:
        request = first_requests.get(plan.name)
        if plan.status != "ready" or plan.kind not in BILLED_KINDS or request is None:
            continue
        price = pricing.lookup(plan.request_model, provider_id=plan.name)
        if price is None:
            if allow_unpriced:
                continue
            raise BudgetError(
                f"{plan.name} has no price in the pricing table, so a spending ceiling cannot bound its calls: add "
                f'its price (--pricing FILE with [models."{plan.request_model}"] input = ..., output = ...) or '
                "allow unpriced calls, uncounted, with --allow-unpriced")
        max_tokens = request.params.get("max_tokens")
        if not max_tokens:
            raise BudgetError(
                f"{plan.name} sends no max_tokens (its provider entry omits it), so one answer's cost has no bound "
                "and a spending ceiling cannot be kept: send max_tokens, or run without --max-cost")
        spend = spends[plan.name] = Spend(ledger, price, int(max_tokens))
        worst = spend.worst(request)
        if worst > ceiling - spent:
            left = f"${ceiling - spent:.4f} left of the ${ceiling:g} ceiling" if spent else f"${ceiling:g}"
            raise BudgetError(
                f"--max-cost {ceiling:g}: {left} is below the worst case of one call to {plan.name} (${worst:.4f}: "
                f"case {request.case_id}, up to {max_tokens} output tokens); raise the ceiling")
    return ledger, spends


def check_judges_priced(judges: list[ProviderPlan], pricing: PricingTable, allow_unpriced: bool) -> None:
    """Raise BudgetError when a ready judge that an API bills has no price: under a ceiling its calls count too."""
    for plan in judges:
        if plan.status == "ready" and plan.kind in BILLED_KINDS and not allow_unpriced \
                and pricing.lookup(plan.request_model, provider_id=plan.name) is None:
            raise BudgetError(
                f"judge {plan.name} has no price in the pricing table, so a spending ceiling cannot bound its calls: "
                f'add its price (--pricing FILE with [models."{plan.request_model}"]) or use --allow-unpriced')
