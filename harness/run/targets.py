"""What a command works on, decided before it runs: which stored run (`run_to_use`, `resume_target`,
`stopped_run`), which providers (`provider_specs` with the command line's overrides, `stored_specs`) and how many
cases (`case_limit`). The CLI parses its arguments, calls these and prints; they raise HarnessError (or
ProviderError) with the one line to show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError, ProviderError, StoreError
from harness.store import queries
from harness.store.db import Store
from harness.suite.load import SUITES_DIR, Suite, load_suite
from harness.suite.spec import ProviderSpec


def run_to_use(store: Store, run_id: str | None, command: str, suite: str | None = None) -> str:
    """The run a command works on: `run_id` when the store has it, else the latest run (of `suite`, a folder,
    when given). A suite's name given where a run id is taken gets a HarnessError saying what to type."""
    named = load_suite(suite).name if suite else None
    if run_id is None:
        found = store.latest_run(named)
        if found is None:
            raise HarnessError(f"{store.path}: no runs{f' of suite {named}' if named else ''} yet; "
                               f"run `make shadow SUITE={named or 'invoices'}` first")
        return found
    try:
        run = store.run(run_id)
    except StoreError as exc:
        folder = Path(run_id) if (Path(run_id) / "suite.toml").is_file() else SUITES_DIR / run_id
        stored = store.latest_run(folder.name)
        if not (folder / "suite.toml").is_file() and stored is None:
            raise
        instead = f"harness {command} --suite {folder}" if command in ("gate", "report", "score") else None
        hint = f"did you mean `{instead}`" if instead else "give run ids (harness runs lists them)"
        latest = f"; its latest run is {stored}" if stored else ""
        raise HarnessError(f"{exc}: '{run_id}' is a suite, not a run id; {hint}{latest}") from None
    if named is not None and run["suite"] != named:
        raise HarnessError(f"run {run_id} is of suite '{run['suite']}', not '{named}' (--suite {suite}); "
                           "leave out --suite to use the run's own")
    return run_id


def resume_target(store: Store, wanted: str, suite_path: str | None) -> str:
    """The run id `--resume` names; 'last' is the latest run that did not complete (of the suite, if given)."""
    if wanted != "last":
        return wanted
    suite = load_suite(suite_path).name if suite_path else None
    found = queries.stopped_runs(store, suite)
    if not found:
        raise HarnessError(f"{store.path}: no stopped run to resume" + (f" for suite '{suite}'" if suite else ""))
    return found[0]["run_id"]


def stopped_run(store: Store, suite: Suite, limit: int | None) -> dict[str, Any] | None:
    """The latest run of this suite (same contents, same case limit) that stopped before every answer was in,
    with its `answers`, `n_cases` and `providers`; None when there is none to resume."""
    for run in queries.stopped_runs(store, suite.name, suite.hash):
        if run["answers"] < run["n_cases"] * run["providers"] and _same_limit(run["case_limit"], limit):
            return run
    return None


def case_limit(suite: Suite, limit: int | None, every: bool) -> int | None:
    """How many cases a new run takes: every one (`every`, or None); `limit`; else the suite's default."""
    if every:
        return None
    return limit or suite.spec.cases.default_limit


def provider_specs(suite: Suite, candidates: list[str] | None = None,
                   incumbent: str | None = None) -> list[ProviderSpec]:
    """The suite's providers, with `candidates` / `incumbent` (provider ids) replacing those of that role; an id
    the suite names keeps the suite's settings for it. Raises ProviderError for an id not like 'kind:model'."""
    specs = list(suite.spec.providers)
    if candidates:
        specs = [s for s in specs if s.role != "candidate"] + [
            _spec(c, "candidate", suite.spec.providers) for c in candidates
        ]
    if incumbent:
        specs = [s for s in specs if s.role != "incumbent"] + [_spec(incumbent, "incumbent", suite.spec.providers)]
    return specs


def stored_specs(store: Store, run_id: str) -> list[ProviderSpec]:
    """The provider entries a stored run was started with."""
    return [ProviderSpec.model_validate(spec) for spec in queries.provider_specs(store, run_id)]


def _spec(provider_id: str, role: str, known: list[ProviderSpec]) -> ProviderSpec:
    for spec in known:
        if spec.id == provider_id:
            return spec.model_copy(update={"role": role})
    try:
        return ProviderSpec(id=provider_id, role=role)
    except ValueError as exc:
        raise ProviderError(f"--{role} {provider_id}: must look like 'kind:model', e.g. 'openai:gpt-4o-mini'") from exc


def _same_limit(stored: Any, wanted: int | None) -> bool:
    import pandas as pd  # here: `harness validate` and `runs` start without pandas

    stored = None if stored is None or pd.isna(stored) else int(stored)
    return stored == wanted
