"""The cost model's arithmetic on profiles whose answers are worked out by hand, and profile validation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from harness.analysis.cost import CostModel, curve, estimate
from harness.suite.profile import ProfileError, load_profile, profile_keys

# One L4-class GPU at $1/hour, on 24/7 (730 h/month): R = $730/month. A replica serves 2 cases/s and is sized to
# run half busy: C = 2 x 0.5 x 3600 x 730 = 2,628,000 cases/month. 0.1 FTE at $120,000/year: F = $1,000/month.
# The API costs $2 per 1,000 cases: c = 0.002.
HAND = """
[volume]
cases_per_month = 300000

[self_hosted]
gpu_hour_usd = 1.0
throughput_cases_per_s = 2.0
target_utilization = 0.5
storage_usd_month = 0
networking_usd_month = 0
engineering_fte = 0.1
fte_usd_year = 120000
"""


def hand_model(**changes: float) -> CostModel:
    values = dict(api_cost_per_case=0.002, replica_monthly=730.0, fixed_monthly=1000.0,
                  cases_per_replica_month=2_628_000.0)
    values.update(changes)
    return CostModel(**values)


def test_profile_turns_into_the_hand_figures(tmp_path):
    path = tmp_path / "profile.toml"
    path.write_text(HAND)
    profile = load_profile(path)
    s = profile.self_hosted
    assert s.hours_per_month == pytest.approx(730.0)
    assert s.gpu_hour_usd * s.gpus_per_replica * s.hours_per_month == pytest.approx(730.0)
    assert s.fixed_monthly == pytest.approx(1000.0)
    assert s.throughput_cases_per_s * s.target_utilization * 3600 * s.hours_per_month == pytest.approx(2_628_000)
    assert profile.volume.monthly == 300_000


def test_monthly_costs_and_break_even_by_hand():
    model = hand_model()
    # 300,000 cases: API 300,000 x 0.002 = $600; one replica: 1,000 + 730 = $1,730
    low = estimate(model, 300_000)
    assert low["monthly"]["api"] == pytest.approx(600.0)
    assert low["monthly"]["self_hosted"] == pytest.approx(1730.0)
    assert low["replicas"] == 1 and low["cheapest"] == "api"
    assert low["per_1k"]["self_hosted"] == pytest.approx(1730.0 / 300)
    # 3,000,000 cases: API $6,000; ceil(3,000,000 / 2,628,000) = 2 replicas: 1,000 + 1,460 = $2,460
    high = estimate(model, 3_000_000)
    assert high["replicas"] == 2
    assert high["monthly"]["self_hosted"] == pytest.approx(2460.0)
    assert high["cheapest"] == "self_hosted"
    # one replica carries the load up to 2,628,000 cases, so it is cheaper from 1,730 / 0.002 = 865,000 cases
    assert model.break_even() == pytest.approx(865_000)


def test_hybrid_adds_the_routed_api_cost():
    model = hand_model()
    # the open model answers all 300,000 cases ($1,730); 0.0005 per case of API calls for the routed ones: +$150
    out = estimate(model, 300_000, routed_cost_per_case=0.0005)
    assert out["monthly"]["hybrid"] == pytest.approx(1880.0)


def test_break_even_is_where_self_hosting_stays_cheaper():
    # R = 730, C = 1,000 cases a replica, c = $1 a case, no fixed cost. One replica is cheaper from 730 cases
    # to 1,000, but the second replica ($1,460) is dearer again up to 1,460 cases; so is the third (2,001: $2,190)
    # until 2,190 cases. From the fourth replica on (3,001 cases: $2,920 < $3,001) it stays cheaper.
    model = hand_model(api_cost_per_case=1.0, fixed_monthly=0.0, cases_per_replica_month=1000.0)
    assert model.self_hosted(800) < model.api(800)
    assert model.self_hosted(1200) > model.api(1200)
    assert model.break_even() == pytest.approx(2190.0)
    volumes = np.linspace(1, 20_000, 40_000)
    cheaper = np.array([model.self_hosted(v) <= model.api(v) for v in volumes])
    first_of_last_run = volumes[np.flatnonzero(~cheaper)[-1] + 1]
    assert first_of_last_run == pytest.approx(2190.0, abs=1.0)


def test_never_breaks_even_when_a_replica_costs_more_than_the_calls_it_replaces():
    # 2,628,000 cases at $0.0002 = $525.60 of API calls a month per replica, less than the replica's $730
    model = hand_model(api_cost_per_case=0.0002)
    assert model.break_even() is None
    assert all(model.self_hosted(v) > model.api(v) for v in np.geomspace(1, 1e10, 200))


def test_extra_samples_and_min_replicas_need_more_replicas():
    # 3 calls a case (2 extra samples for agreement): a replica carries 876,000 cases, not 2,628,000
    model = hand_model(calls_per_case=3.0, min_replicas=2)
    assert model.replicas(1) == 2
    assert model.replicas(2_000_000) == 3  # ceil(2,000,000 x 3 / 2,628,000)
    # break-even: c x C/s = 0.002 x 876,000 = 1,752 > 730; K = max(3, ceil((1000 + 1752) / (1752 - 730))) = 3;
    # on step 2 (two replicas, up to 1,752,000 cases): (1,000 + 2 x 730) / 0.002 = 1,230,000
    assert model.break_even() == pytest.approx(1_230_000)


def test_curve_spans_the_volume_and_the_break_even():
    model = hand_model()
    points = curve(model, 300_000, routed_cost_per_case=0.0005)
    assert points["volume"].min() == pytest.approx(3_000)
    assert points["volume"].max() >= 865_000 * 3
    i = int(np.argmin(np.abs(points["volume"] - 3_000_000)))
    v = points["volume"][i]
    assert points["api"][i] == pytest.approx(v * 0.002)
    assert points["self_hosted"][i] == pytest.approx(1000 + 730 * math.ceil(v / 2_628_000))
    assert points["hybrid"][i] == pytest.approx(points["self_hosted"][i] + v * 0.0005)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[volume]\ncases_per_month = 10\ncases_per_day = 1\n", "volume: give exactly one of cases_per_month"),
        ("[volume]\n", "volume: give exactly one"),
        ("", "missing key 'volume'"),
        ("[volume]\ncases_per_day = 10\n[self_hosted]\ngpu_hours = 2\n", "unknown key 'self_hosted.gpu_hours'"),
        ("[volume]\ncases_per_day = 10\n[self_hosted]\ntarget_utilization = 1.5\n",
         "self_hosted.target_utilization: Input should be less than or equal to 1"),
        ("[volume]\ncases_per_day = 10\n[requirements]\nteam = 'great'\n", "requirements.team: Input should be"),
        ("[volume]\ncases_per_day = -3\n", "volume.cases_per_day: Input should be greater than 0"),
        ("[volume\n", "not valid TOML"),
        ("[volume]\ncases_per_month = inf\n", "volume.cases_per_month: Input should be a finite number"),
        ("[volume]\ncases_per_day = 1\n[self_hosted]\nthroughput_cases_per_s = nan\n",
         "self_hosted.throughput_cases_per_s: Input should be a finite number"),
        ("[volume]\ncases_per_day = 1\n[self_hosted]\nthroughput_cases_per_s = 1\n"
         "throughput_output_tokens_per_s = 100\n", "give at most one of throughput_cases_per_s"),
    ],
)
def test_bad_profiles_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "profile.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(ProfileError, match=re.escape("no such profile; copy suites/invoices/profile.toml")):
        load_profile(tmp_path / "nope.toml")


def test_every_profile_key_is_listed():
    keys = profile_keys()
    assert "cases_per_month" in keys["volume"]
    assert "gpu_hour_usd" in keys["self_hosted"]
    assert set(keys[""]) == {"description", "volume", "api", "self_hosted", "requirements", "cascade"}
