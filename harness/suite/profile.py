"""The workload profile: what the cost model and the decision need that a run cannot measure.

A profile is `profile.toml` in the suite's folder (or a file given with `--profile`): the volume the workload
runs at, what a GPU costs and how many a replica needs, the team's cost, and the declared decision factors
(data sensitivity, team capability, customisation, iteration speed, latency requirement). It is validated like
suite.toml: an unknown key, a wrong type or an out-of-range value is a one-line error naming the file and key.
Every default is documented here and printed with the results, so an assumption is never hidden.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from harness.errors import ProfileError
from harness.suite.load import validation_message

DAYS_PER_MONTH = 365 / 12


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class VolumeSpec(_Strict):
    """`[volume]`: how much the workload runs. Give cases per month or per day (one of them)."""

    cases_per_month: float | None = Field(default=None, gt=0)
    cases_per_day: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one(self) -> VolumeSpec:
        if (self.cases_per_month is None) == (self.cases_per_day is None):
            raise ValueError("give exactly one of cases_per_month and cases_per_day")
        return self

    @property
    def monthly(self) -> float:
        """Cases per month (a day is 1/12 of a 365-day year's days: 30.4 days a month)."""
        return self.cases_per_month if self.cases_per_month is not None else self.cases_per_day * DAYS_PER_MONTH


class ApiSpec(_Strict):
    """`[api]`: which provider of the run prices the API option (default: the run's incumbent)."""

    provider: str | None = None


class SelfHostedSpec(_Strict):
    """`[self_hosted]`: the cost of serving the candidate yourself. USD; defaults are a single cloud L4-class GPU
    kept on 24/7, a quarter of an engineer, and no fine-tuning."""

    gpu: str = "NVIDIA L4 24GB"
    gpu_hour_usd: float = Field(default=0.80, ge=0)  # on-demand cloud price of one GPU for one hour
    gpus_per_replica: int = Field(default=1, ge=1, le=64)
    # Cases per second one replica sustains on the target GPU. Unset: the latest `harness load` of the candidate,
    # else an estimate from the run (concurrency / mean latency). A laptop's figure is not a GPU's: enter it.
    throughput_cases_per_s: float | None = Field(default=None, gt=0)
    # Or output tokens per second per replica (e.g. from `vllm bench serve`): turned into cases/s with the
    # candidate's measured output tokens per case. Give at most one of the two.
    throughput_output_tokens_per_s: float | None = Field(default=None, gt=0)
    target_utilization: float = Field(default=0.6, gt=0, le=1)  # replicas are sized to run at most this busy
    min_replicas: int = Field(default=1, ge=0, le=10_000)
    hours_per_day: float = Field(default=24, gt=0, le=24)  # 24: on around the clock; fewer: traffic in those hours
    storage_usd_month: float = Field(default=50, ge=0)  # model weights, images, logs
    networking_usd_month: float = Field(default=50, ge=0)  # load balancer, egress
    engineering_fte: float = Field(default=0.25, ge=0, le=100)  # people running the serving stack
    fte_usd_year: float = Field(default=200_000, ge=0)  # fully loaded cost of one engineer
    fine_tunes_per_year: float = Field(default=0, ge=0)
    fine_tune_usd: float = Field(default=0, ge=0)  # compute and labelling per fine-tune

    @model_validator(mode="after")
    def _one_throughput(self) -> SelfHostedSpec:
        if self.throughput_cases_per_s is not None and self.throughput_output_tokens_per_s is not None:
            raise ValueError("give at most one of throughput_cases_per_s and throughput_output_tokens_per_s")
        return self

    @property
    def hours_per_month(self) -> float:
        """Hours a month each replica is on."""
        return self.hours_per_day * DAYS_PER_MONTH

    @property
    def fixed_monthly(self) -> float:
        """USD a month that do not grow with volume: storage, networking, engineering, fine-tuning."""
        return (self.storage_usd_month + self.networking_usd_month + self.engineering_fte * self.fte_usd_year / 12
                + self.fine_tunes_per_year * self.fine_tune_usd / 12)


class RequirementsSpec(_Strict):
    """`[requirements]`: the declared half of the decision matrix."""

    # public, internal: no constraint; confidential: prefer keeping it in-house; regulated: may not leave
    data_sensitivity: Literal["public", "internal", "confidential", "regulated"] = "internal"
    latency_p95_ms: float | None = Field(default=None, gt=0)  # end-to-end p95 the application needs
    # none: nobody to run GPU serving; some: can run a managed endpoint; experienced: runs its own inference
    team: Literal["none", "some", "experienced"] = "some"
    # none: the task works as prompted; prompting: prompt work only; fine_tuning: needs its own weights
    customisation: Literal["none", "prompting", "fine_tuning"] = "prompting"
    # how often the task, prompt or schema changes: weekly changes favour an API (nothing to re-validate on GPUs)
    iteration: Literal["weekly", "monthly", "stable"] = "monthly"


class CascadeSpec(_Strict):
    """`[cascade]`: the hybrid routing simulation."""

    signal: Literal["auto", "logprob_mean", "margin_mean", "logprob_min", "agreement", "valid"] = "auto"
    margin: float | None = Field(default=None, ge=0, le=1)  # default: the suite's gate margin


class Profile(_Strict):
    """The validated contents of a workload profile."""

    description: str = ""
    volume: VolumeSpec
    api: ApiSpec = ApiSpec()
    self_hosted: SelfHostedSpec = SelfHostedSpec()
    requirements: RequirementsSpec = RequirementsSpec()
    cascade: CascadeSpec = CascadeSpec()
    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """The file the profile was read from."""
        return self._source

    def assumptions(self) -> list[tuple[str, str]]:
        """(name, value) lines for the report and the terminal: every input the cost model used."""
        s, r = self.self_hosted, self.requirements
        throughput = ("entered: " + (f"{s.throughput_cases_per_s:g} cases/s" if s.throughput_cases_per_s
                                     else f"{s.throughput_output_tokens_per_s:g} output tokens/s")
                      if s.throughput_cases_per_s or s.throughput_output_tokens_per_s else "measured (see below)")
        return [
            ("volume", f"{self.volume.monthly:,.0f} cases/month"),
            ("GPU", f"{s.gpu}, ${s.gpu_hour_usd:g}/hour, {s.gpus_per_replica} per replica"),
            ("throughput per replica", throughput),
            ("replicas", f"at most {s.target_utilization:.0%} busy, at least {s.min_replicas}, "
                         f"on {s.hours_per_day:g} h/day ({s.hours_per_month:,.0f} h/month)"),
            ("storage + networking", f"${s.storage_usd_month:,.0f} + ${s.networking_usd_month:,.0f} a month"),
            ("engineering", f"{s.engineering_fte:g} FTE at ${s.fte_usd_year:,.0f}/year"),
            ("fine-tuning", f"{s.fine_tunes_per_year:g} a year at ${s.fine_tune_usd:,.0f}"),
            ("data sensitivity", r.data_sensitivity),
            ("latency requirement", f"p95 ≤ {r.latency_p95_ms:,.0f} ms" if r.latency_p95_ms else "none declared"),
            ("team", r.team),
            ("customisation", r.customisation),
            ("iteration", r.iteration),
        ]


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file. Raises ProfileError naming the file and key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile; copy suites/invoices/profile.toml and set [volume]") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(validation_message(path, exc, data)) from None
    profile._source = str(path)
    return profile


def find_profile(suite_path: str | Path, explicit: str | Path | None = None) -> Profile | None:
    """The profile given, else the suite folder's `profile.toml`, else None."""
    if explicit is not None:
        return load_profile(explicit)
    default = Path(suite_path) / "profile.toml"
    return load_profile(default) if default.exists() else None


def profile_keys() -> dict[str, list[str]]:
    """Every key a profile may hold, per table (the authoring guide's test checks each is documented)."""
    out: dict[str, list[str]] = {"": list(Profile.model_fields)}
    for name, model in (("volume", VolumeSpec), ("api", ApiSpec), ("self_hosted", SelfHostedSpec),
                        ("requirements", RequirementsSpec), ("cascade", CascadeSpec)):
        out[name] = list(model.model_fields)
    return out

