"""examples/recommender.py at a tiny size: 2 workers end where 1 does, and both learn the planted factors."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dist_utils import DistPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import recommender  # noqa: E402

TINY = replace(recommender.Config(), users=150, items=80, interactions=24_000, epochs=4, batch=512, l2=0.05)


def _train_tiny() -> dict:
    return recommender.train(TINY)


@pytest.fixture(scope="module")
def one() -> dict:
    torch.set_num_threads(1)
    return recommender.train(TINY)


def test_two_workers_match_one(one: dict) -> None:
    with DistPool(2) as pool:
        two = pool.run(_train_tiny, timeout=120)
    for res in two:
        assert res["state"].keys() == one["state"].keys()
        for k, v in one["state"].items():
            torch.testing.assert_close(res["state"][k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        assert res["bytes_per_step"] > 0
    assert abs(two[0]["rmse"] - one["rmse"]) < 1e-4


def test_learns_the_planted_factors(one: dict) -> None:
    # Predicting 0 scores sqrt(1 + noise^2) ~ 1.12 x the floor's 0.5; the tiny run gets most of the way.
    assert one["rmse"] < 1.15 * one["noise_floor"]
    assert one["user_rows"] == 150  # every user seen, none of the 2^40 others
