"""Growmaps: JSON round trip, every malformed file refused, Sequoia .pt files read without running code, the
planner's DP against brute force, and StaticTree greedy equivalence with HF generate."""

from __future__ import annotations

import itertools
import json
import pickle
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import hf_greedy, random_prompts

import specvlm
from drafters import NGramDrafter
from growmaps.plan import Planner, rank_probs
from growmaps.plan import main as plan_main
from specvlm.builders.static import DEFAULT_GROWMAP, shipped_growmap
from specvlm.errors import ConfigError, GrowmapError
from specvlm.growmap import PROVENANCE_KEYS, Growmap, load_growmap, save_growmap

PROV = {key: f"test {key}" for key in PROVENANCE_KEYS}


def valid() -> dict[str, Any]:
    return {"format": "specvlm-growmap", "version": 1, "parents": [-1, 0, 0, 1], "provenance": dict(PROV)}


def write(tmp_path: Path, obj: Any, name: str = "g.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


# -- our JSON format ----------------------------------------------------------------------------------------------
def test_round_trip(tmp_path: Path) -> None:
    parents = (-1, 0, 0, 0, 1, 1, 2, 4)
    path = save_growmap(tmp_path / "sub" / "t.json", parents, PROV, predicted_accepted=2.5, acceptance=[0.6, 0.2])
    got = load_growmap(path)
    assert got.parents == parents
    assert got.provenance == PROV
    assert got.predicted_accepted == 2.5
    assert got.acceptance == (0.6, 0.2)
    assert got.source == path
    assert (got.size, got.depth) == (8, 3)
    assert json.loads(path.read_text())["parents"] == list(parents)  # plain JSON anyone can read


def test_branching_defines_the_tree(tmp_path: Path) -> None:
    obj = valid()
    del obj["parents"]
    obj["branching"] = [2, 1]
    assert load_growmap(write(tmp_path, obj)).parents == (-1, 0, 0, 1, 2)


def test_save_refuses_bad_trees_and_existing_files(tmp_path: Path) -> None:
    with pytest.raises(GrowmapError, match="precede"):
        save_growmap(tmp_path / "x.json", [-1, 2, 0], PROV)
    path = save_growmap(tmp_path / "y.json", [-1, 0], PROV)
    with pytest.raises(GrowmapError, match="already exists"):
        save_growmap(path, [-1, 0], PROV, overwrite=False)


def _edit(**changes: Any) -> dict[str, Any]:
    obj = valid()
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


_DROP = object()
MALFORMED: dict[str, tuple[Any, str]] = {
    "not an object": ([-1, 0, 0], "JSON object"),
    "wrong format": (_edit(format="sequoia"), "format"),
    "bad version": (_edit(version=2), "version 2"),
    "version as text": (_edit(version="1"), "version"),
    "unknown key": (_edit(nodes=4), "unknown key"),
    "no provenance": (_edit(provenance=_DROP), "missing key"),
    "provenance lacks a key": (_edit(provenance={"draft": "x"}), "lacks"),
    "provenance wrong type": (_edit(provenance={**PROV, "created": 2024}), "strings"),
    "no tree": (_edit(parents=_DROP), "exactly one"),
    "parents and branching": (_edit(branching=[2]), "exactly one"),
    "parents not a list": (_edit(parents="-1,0"), "list of integers"),
    "float parent": (_edit(parents=[-1, 0.0]), "not an integer"),
    "bool parent": (_edit(parents=[-1, True]), "not an integer"),
    "empty parents": (_edit(parents=[]), "empty"),
    "root with a parent": (_edit(parents=[0, 0]), "root"),
    "parent after child": (_edit(parents=[-1, 2, 0]), "precede"),
    "self loop": (_edit(parents=[-1, 1]), "precede"),
    "cycle": (_edit(parents=[-1, 2, 1]), "precede"),
    "zero branching": ({**_edit(parents=_DROP), "branching": [2, 0]}, "positive"),
    "predicted not a number": (_edit(predicted_accepted="3"), "finite number"),
    "predicted impossible": (_edit(predicted_accepted=7.0), "impossible"),
    "acceptance over 1": (_edit(acceptance=[0.5, 1.5]), r"\[0, 1\]"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_json_raises(tmp_path: Path, case: str) -> None:
    obj, message = MALFORMED[case]
    with pytest.raises(GrowmapError, match=message):
        load_growmap(write(tmp_path, obj))


def test_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(GrowmapError, match="not found"):
        load_growmap(tmp_path / "nope.json")
    with pytest.raises(GrowmapError, match="not found"):
        load_growmap(tmp_path)  # a folder
    with pytest.raises(GrowmapError, match="not valid JSON"):
        load_growmap(write(tmp_path, '{"format": "specvlm-growmap", '))
    with pytest.raises(GrowmapError, match="not valid JSON"):
        load_growmap(write(tmp_path, "parents: [-1, 0]"))
    (tmp_path / "bin.json").write_bytes(b"\x80\x04\xff\xfe")
    with pytest.raises(GrowmapError, match="not valid JSON"):
        load_growmap(tmp_path / "bin.json")


# -- Sequoia .pt files --------------------------------------------------------------------------------------------
def sequoia_dict(successors: list[list[int]]) -> dict[str, Any]:
    """A growmap dict as Sequoia's tree_search.py writes it (computed here from Successors)."""
    size = len(successors)
    parent = {c: n for n, kids in enumerate(successors) for c in kids}
    depth, mask = [0] * size, torch.zeros(size, size, dtype=torch.long)
    roots, branches, level = [], [], [0]
    while level:
        roots.append(level)
        branches.append([len(successors[n]) for n in level])
        level = [c for n in level for c in successors[n]]
    for node in range(size):
        cur = node
        mask[node, node] = 1
        while cur in parent:
            cur = parent[cur]
            mask[node, cur] = 1
            depth[node] += 1
    return {
        "roots": roots,
        "branches": branches,
        "Successors": successors,
        "mask": mask,
        "depth": torch.LongTensor(depth),
        "size": size,
    }


SEQUOIA_TREE = [[1, 2, 3], [4, 5], [6], [], [7], [], [], []]


def test_sequoia_pt_loads(tmp_path: Path) -> None:
    path = tmp_path / "A100-CNN.pt"
    torch.save(sequoia_dict(SEQUOIA_TREE), path)
    got = load_growmap(path)
    assert got.parents == (-1, 0, 0, 0, 1, 1, 2, 4)
    assert got.provenance["source_format"] == "sequoia-pt"
    assert isinstance(specvlm.StaticTree(path), specvlm.TemplateTree)


def test_sequoia_children_keep_rank_order(tmp_path: Path) -> None:
    """Successors[i] is in rank order even when indices are not: nodes are renumbered breadth-first."""
    obj = sequoia_dict([[2, 1], [], [3], []])
    torch.save(obj, tmp_path / "g.pt")
    # old node 2 is the root's best child: new node 1, and its child (old 3) becomes node 3
    assert load_growmap(tmp_path / "g.pt").parents == (-1, 0, 0, 1)


def _corrupt(**changes: Any) -> dict[str, Any]:
    obj = sequoia_dict(SEQUOIA_TREE)
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


SEQUOIA_MALFORMED: dict[str, tuple[Any, str]] = {
    "not a dict": ([[1], []], "dict with keys"),
    "no Successors": (_corrupt(Successors=_DROP), "missing key"),
    "size disagrees": (_corrupt(size=9), "size' says 9"),
    "size not int": (_corrupt(size="8"), "size"),
    "reached twice": (_corrupt(Successors=[[1, 2, 3], [4, 5], [6, 4], [], [7], [], [], []]), "reached twice"),
    "cycle to root": (_corrupt(Successors=[[1, 2, 3], [4, 5], [6], [], [7], [], [], [0]]), "reached twice"),
    "unreachable": (_corrupt(Successors=[[1, 2, 3], [4, 5], [6], [], [], [], [], []]), "cannot be reached"),
    "child out of range": (_corrupt(Successors=[[1, 2, 3], [4, 5], [6], [], [9], [], [], []]), "outside"),
    "depth disagrees": (_corrupt(depth=torch.zeros(8, dtype=torch.long)), "depth"),
    "mask disagrees": (_corrupt(mask=torch.eye(8, dtype=torch.long)), "mask"),
    "branches disagree": (_corrupt(branches=[[3], [2, 1, 1], [1, 0, 0], [0]]), "branches"),
}


@pytest.mark.parametrize("case", SEQUOIA_MALFORMED, ids=list(SEQUOIA_MALFORMED))
def test_malformed_sequoia_raises(tmp_path: Path, case: str) -> None:
    obj, message = SEQUOIA_MALFORMED[case]
    torch.save(obj, tmp_path / "g.pt")
    with pytest.raises(GrowmapError, match=message):
        load_growmap(tmp_path / "g.pt")


class _Payload:
    """Unpickling this would create the sentinel file: proof that code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.sentinel,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_unsafe_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    sentinel = tmp_path / "pwned"
    obj = {**sequoia_dict(SEQUOIA_TREE), "Successors": _Payload(sentinel)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(obj, fh)
    with pytest.raises(GrowmapError, match="refused"):
        load_growmap(path)
    with pytest.raises(GrowmapError, match="refused"):
        specvlm.StaticTree(path)
    assert not sentinel.exists()
    pickle.loads(pickle.dumps(_Payload(sentinel)))  # control: unpickled without weights_only, the payload does run
    assert sentinel.exists()


def test_junk_pt_file(tmp_path: Path) -> None:
    path = write(tmp_path, "hello", "junk.pt")
    with pytest.raises(GrowmapError, match="not a readable torch file"):
        load_growmap(path)


# -- the planner --------------------------------------------------------------------------------------------------
def brute_value(parents: tuple[int, ...], acc: list[float]) -> float:
    """Expected tokens per call of a tree, written independently of growmaps.plan: sum over nodes of the
    product along the path of P(rank k) = acc[k] * prod_{i<k} (1 - acc[i])."""

    def p_rank(k: int) -> float:
        if k >= len(acc):
            return 0.0
        out = acc[k]
        for i in range(k):
            out *= 1 - acc[i]
        return out

    total = 1.0
    for node in range(1, len(parents)):
        prob, cur = 1.0, node
        while cur > 0:
            par = parents[cur]
            rank = [i for i in range(1, len(parents)) if parents[i] == par].index(cur)
            prob *= p_rank(rank)
            cur = par
        total += prob
    return total


def all_trees(max_nodes: int):
    """Every ordered tree with at most max_nodes nodes (as parents lists with parents[i] < i; repeats allowed)."""
    for n in range(1, max_nodes + 1):
        for rest in itertools.product(*[range(i) for i in range(1, n)]):
            yield (-1, *rest)


def shape(parents: tuple[int, ...]) -> tuple[int, int]:
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    widths = Counter(parents[1:])
    return max(depth), max(widths.values(), default=0)


TREES = [(t, *shape(t)) for t in all_trees(5)]


@pytest.mark.parametrize("seed", range(12))
def test_planner_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    acc = [rng.choice([0.0, rng.random()]) if k else rng.random() for k in range(rng.randint(1, 5))]
    values = [(brute_value(t, acc), len(t), d, w) for t, d, w in TREES]
    for size, depth, branch in itertools.product(range(1, 6), range(1, 5), range(1, 5)):
        best = max(v for v, n, d, w in values if n <= size and d <= depth and w <= branch)
        plan = Planner(acc, size, depth, branch).best()
        got_depth, got_width = shape(plan.parents)
        assert plan.size <= size and got_depth <= depth and got_width <= branch
        assert plan.expected_tokens == pytest.approx(best, abs=1e-12), (acc, size, depth, branch)
        assert brute_value(plan.parents, acc) == pytest.approx(plan.expected_tokens, abs=1e-12)


def test_planner_table_reads_smaller_budgets() -> None:
    acc = [0.7, 0.3, 0.1]
    big = Planner(acc, 12, 4, 3)
    for size in range(1, 13):
        for depth in range(0, 5):
            assert big.best(size, depth).expected_tokens == pytest.approx(
                Planner(acc, size, 4, 3).best(size, depth).expected_tokens
            )


def test_planner_keeps_worthless_nodes_out() -> None:
    plan = Planner([0.5, 0.0, 0.0], size=40, max_depth=3, max_branch=3).best()
    assert plan.parents == (-1, 0, 1, 2)  # rank-1 and rank-2 children are never accepted: a chain
    assert plan.expected_tokens == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert rank_probs([0.5, 0.5, 1.0]) == [0.5, 0.25, 0.25]


def test_plan_cli_hardware_aware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acc_file = write(
        tmp_path,
        {
            "acceptance": [0.6, 0.3, 0.2, 0.1],
            "costs": {"target_ms": {"1": 50, "4": 55, "8": 60, "16": 100, "32": 300}, "draft_ms_per_level": 1.0},
            "provenance": {**PROV, "command": "python -m growmaps.measure ..."},
        },
        "acc.json",
    )
    out = tmp_path / "tree.json"
    argv = ["--acceptance", str(acc_file), "--costs", str(acc_file), "--sizes", "4,8,16,32", "--out", str(out)]
    assert plan_main(argv) == 0
    table = capsys.readouterr().out
    assert "tok/s" in table and table.count("*") == 1
    got = load_growmap(out)
    assert 4 <= got.size <= 16  # 32 tokens cost 6x a single one here: never worth it
    assert got.provenance["command"].startswith("python -m growmaps.plan --acceptance")
    assert got.provenance["acceptance_command"] == "python -m growmaps.measure ..."
    assert got.predicted_accepted is not None and got.predicted_accepted > 1.5
    with pytest.raises(specvlm.SpecVLMError, match="already exists"):
        plan_main(argv)
    with pytest.raises(ConfigError, match="needs --costs"):
        plan_main(["--acceptance", str(acc_file), "--sizes", "4,8"])


# -- StaticTree ----------------------------------------------------------------------------------------------------
def test_shipped_growmap_is_valid_and_default() -> None:
    path = shipped_growmap()
    assert path is not None and path.name == DEFAULT_GROWMAP
    gm = load_growmap(path)
    assert isinstance(gm, Growmap) and gm.predicted_accepted is not None
    assert gm.provenance["command"].startswith("python -m growmaps.plan")
    tree = specvlm.StaticTree()
    assert tree.parents == gm.parents and tree.name == "static"
    assert specvlm.make_tree("static") == tree


def test_static_tree_arguments(tmp_path: Path) -> None:
    assert specvlm.StaticTree(parents=[-1, 0, 0]).parents == (-1, 0, 0)
    with pytest.raises(ConfigError, match="precede"):
        specvlm.StaticTree(parents=[-1, 3])
    with pytest.raises(ConfigError, match="not both"):
        specvlm.StaticTree(growmap="x.json", parents=[-1])
    with pytest.raises(GrowmapError, match="not found"):
        specvlm.StaticTree(tmp_path / "missing.json")


def test_static_tree_equals_hf_greedy(tiny_target: torch.nn.Module) -> None:
    dec = specvlm.load(tiny_target, NGramDrafter())
    tree = specvlm.StaticTree()
    for ids in random_prompts(8, seed=11):
        ref = hf_greedy(tiny_target, ids, 20)
        got = dec.generate(prompt=ids, max_new_tokens=20, tree=tree)
        assert got.tokens == ref, f"prompt {ids}: {got.tokens} != {ref}"
