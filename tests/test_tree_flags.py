"""The eval CLIs' tree shape flags turn into the builders they name, and wrong combinations say what to do."""

from __future__ import annotations

import pytest

import specvlm
from eval.args import tree_from_args
from eval.cnn_text import build_parser


def tree_of(*argv: str) -> specvlm.TreeBuilder | str | None:
    return tree_from_args(build_parser().parse_args(list(argv)))


def test_shape_flags_pick_their_tree() -> None:
    assert tree_of("--branching", "3,1,1") == specvlm.BranchingTree([3, 1, 1])
    assert tree_of("--tree", "static", "--branching", "2,2") == specvlm.BranchingTree([2, 2])
    assert tree_of("--depth", "9", "--tree", "chain") == specvlm.ChainTree(depth=9)
    assert tree_of("--B", "12") == specvlm.DynamicTree(budget=12)
    assert tree_of("--tree", "opt") == "opt"


def test_branching_flag_refuses_bad_lists_and_other_trees(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        tree_of("--branching", "2,0,1")
    assert "positive integers" in capsys.readouterr().err
    with pytest.raises(specvlm.ConfigError, match="--branching does not shape --tree chain"):
        tree_of("--tree", "chain", "--branching", "2,1")


def test_fixed_size_turns_off_sizing_for_tokens_per_second() -> None:
    assert tree_of("--B", "12").hardware_aware
    assert tree_of("--B", "12", "--fixed-size") == specvlm.DynamicTree(budget=12, hardware_aware=False)
    assert tree_of("--tree", "chain", "--fixed-size") == specvlm.ChainTree(hardware_aware=False)
    assert tree_of("--tree", "opt", "--nodes", "9", "--fixed-size") == specvlm.OptTree(nodes=9, hardware_aware=False)
    with pytest.raises(specvlm.ConfigError, match="--fixed-size is for --tree chain, dynamic or opt"):
        tree_of("--fixed-size")
    with pytest.raises(specvlm.ConfigError, match="--fixed-size is for --tree chain, dynamic or opt"):
        tree_of("--tree", "static", "--fixed-size")


def test_sweep_sizes_its_trees_unless_fixed_size() -> None:
    from eval.sweep import build_parser, sweep_trees

    sized = sweep_trees(build_parser().parse_args(["--budgets", "8,16", "--depths", "4"]))
    assert list(sized) == ["ar", "chain d=4", "dynamic B=8 d=4", "dynamic B=16 d=4"]
    assert sized["dynamic B=16 d=4"] == specvlm.DynamicTree(budget=16, topk=4, depth=4)
    fixed = sweep_trees(build_parser().parse_args(["--budgets", "8", "--depths", "4", "--topk", "2", "--fixed-size"]))
    assert fixed["chain d=4"] == specvlm.ChainTree(depth=4, hardware_aware=False)
    assert fixed["dynamic B=8 d=4"] == specvlm.DynamicTree(budget=8, topk=2, depth=4, hardware_aware=False)


def test_sweep_shapes_replace_the_grid() -> None:
    from eval.sweep import build_parser, sweep_trees

    trees = sweep_trees(build_parser().parse_args(["--shapes", "32x8,64x10", "--fixed-size"]))
    assert list(trees) == ["ar", "dynamic B=32 d=8", "dynamic B=64 d=10"]
    assert trees["dynamic B=64 d=10"] == specvlm.DynamicTree(budget=64, topk=4, depth=10, hardware_aware=False)
    for bad in ("32", "32x", "x8", "0x8", "32x8,a"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--shapes", bad])


def test_the_seeds_flags_are_accepted() -> None:
    """Commands copied from the Sequoia / Dynasurge / OPT-Tree READMEs parse: --mode sTree|dTree|auto, --use_bfs,
    --max_depth (with --nodes --threshold) name the same trees as --tree static|dynamic, --use-bfs, --max-depth."""
    args = build_parser().parse_args(["--mode", "dTree", "--B", "64", "--use_bfs", "--T", "0.9", "--P", "1.0"])
    assert args.use_bfs and tree_from_args(args) == specvlm.DynamicTree(budget=64)
    assert tree_of("--mode", "sTree", "--branching", "4,2") == specvlm.BranchingTree([4, 2])
    assert tree_of("--mode", "auto") is None
    opt = tree_of("--tree", "opt", "--nodes", "60", "--threshold", "0.5", "--max_depth", "10")
    assert opt == specvlm.OptTree(nodes=60, threshold=0.5, max_depth=10)


def test_an_unknown_seed_mode_says_what_to_use(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        tree_of("--mode", "xTree")
    assert "sTree (static), dTree (dynamic) or auto" in capsys.readouterr().err
