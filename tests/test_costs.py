"""Hardware-aware tree sizes: the forward-cost table, the tokens-per-second choice, and builders that follow it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import perturbed_copy, tiny_llama

from drafters import ModelDrafter
from specvlm.builders import ChainTree, DynamicTree, OptTree, TreeBuilder
from specvlm.builders.growing import StepLimits
from specvlm.costs import AcceptanceFit, CostTable, SpeedModel, cached_costs, cost_key
from specvlm.drafting import DraftContext
from specvlm.models import TargetModel
from specvlm.sampling import Sampling

FLAT = CostTable(((1, 1000.0), (64, 1000.0)))  # every tree costs one (slow) forward: drafting time is noise
STEEP = CostTable(((1, 10.0), (2, 1e6)))  # any drafted node costs 10^5 forwards


def test_cost_table_interpolates_and_extrapolates() -> None:
    table = CostTable(((1, 10.0), (4, 16.0), (8, 32.0)))
    assert table.ms(1) == 10.0
    assert table.ms(2) == pytest.approx(12.0)
    assert table.ms(6) == pytest.approx(24.0)
    assert table.ms(16) == pytest.approx(64.0)  # beyond the last size: the last segment's slope
    assert CostTable.from_dict(table.as_dict()) == table
    with pytest.raises(ValueError):
        CostTable(((4, 10.0), (1, 5.0)))
    with pytest.raises(ValueError):
        CostTable(((1, 0.0),))


def test_best_count_weighs_gain_against_cost() -> None:
    gains = [0.9, 0.8, 0.5, 0.2, 0.05, 0.01]
    assert SpeedModel(FLAT).best_count(gains, draft_ms=5.0) == len(gains)  # free nodes: keep all that may help
    assert SpeedModel(STEEP).best_count(gains, draft_ms=5.0) == 0  # nothing pays for itself: the root alone
    # 10 ms per extra node after the first: (1 + 0.9 + 0.8) / 40 beats (1 + 0.9) / 30 but not what follows
    linear = CostTable(((1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0), (5, 50.0)))
    speed = SpeedModel(linear)
    rates = [speed.rate(gains, n, 0.0) for n in range(5)]
    assert speed.best_count(gains[:4], draft_ms=0.0) == max(range(5), key=lambda n: (rates[n], -n))
    # a draft that the target accepts half as often as it claims earns smaller trees
    assert SpeedModel(linear, gain_scale=0.5).best_count(gains, 0.0) <= speed.best_count(gains, 0.0)


def test_worth_drafting_compares_best_cases() -> None:
    gains = [0.9, 0.8]
    assert SpeedModel(FLAT).worth_drafting(gains, draft_ms=5.0, level_ms=1.0, more_gain=0.7, more_nodes=1)
    assert not SpeedModel(FLAT).worth_drafting(gains, draft_ms=5.0, level_ms=100.0, more_gain=0.01, more_nodes=1)


def test_acceptance_fit_moves_from_prior_to_observed() -> None:
    fit = AcceptanceFit()
    assert fit.scale == 1.0
    for _ in range(50):
        fit.update(predicted=4.0, accepted=1)
    assert fit.scale == pytest.approx((50 + 4) / (200 + 4))


def test_cached_costs_measures_once_then_reads(tmp_path: Path) -> None:
    target = TargetModel(tiny_llama(seed=0))
    table = cached_costs(target, folder=tmp_path)
    saved = tmp_path / f"{cost_key(target)}.json"
    assert saved.is_file() and table.points[0][0] == 1 and table.points[-1][0] == 64
    assert all(ms > 0 for _, ms in table.points)
    # the file is the source from now on: change it and the change comes back (no second measurement)
    data = json.loads(saved.read_text())
    data["target_ms"] = {"1": 1.5, "16": 2.5}
    saved.write_text(json.dumps(data))
    assert cached_costs(target, folder=tmp_path) == CostTable(((1, 1.5), (16, 2.5)))
    # the key follows what the costs depend on
    with target.unpacked():
        assert cost_key(target) != saved.stem or target.packed is None


def grown(builder: TreeBuilder, speed: SpeedModel | None) -> int:
    """Nodes in one tree `builder` grows after a prompt, from a draft close to the tiny target."""
    target = tiny_llama(seed=0)
    session = ModelDrafter(perturbed_copy(target, scale=0.05, seed=1)).session(
        DraftContext(tuple(list(range(10, 30))), 96)
    )
    limits = StepLimits(max_depth=8, max_nodes=64, speed=speed)
    return builder.build(session, 29, limits, Sampling(), torch.Generator().manual_seed(0)).size


@pytest.mark.parametrize(
    "builder",
    [ChainTree(depth=6), DynamicTree(budget=24, topk=3, depth=6), OptTree(nodes=24, threshold=0.0, max_depth=6)],
    ids=lambda b: b.name,
)
def test_builders_follow_the_speed_model(builder: TreeBuilder) -> None:
    fixed = grown(builder, None)
    assert fixed > 1
    flat = grown(builder, SpeedModel(FLAT))  # costs that never rise: every node but the hopeless ones
    assert 1 < flat <= fixed
    assert grown(builder, SpeedModel(STEEP)) == 1  # the root alone
    assert grown(builder, SpeedModel(FLAT, gain_scale=0.02)) <= flat


def test_tree_predicted_is_the_kept_path_mass() -> None:
    tree_size = grown(ChainTree(depth=3, hardware_aware=False), None)
    target = tiny_llama(seed=0)
    session = ModelDrafter(perturbed_copy(target, scale=0.05, seed=1)).session(
        DraftContext(tuple(list(range(10, 30))), 96)
    )
    tree = ChainTree(depth=3).build(session, 29, StepLimits(8, 64), Sampling(), torch.Generator().manual_seed(0))
    assert tree.size == tree_size == 4
    assert 0.0 < tree.predicted <= 3.0 and math.isfinite(tree.predicted)
