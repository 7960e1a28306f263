"""One tree registry (specvlm.tree_kinds) behind make_tree, tree_from_spec and the CLIs' tree flags; the benchmark
methods' labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import specvlm
from eval.args import TREE_CHOICES, TREE_FLAGS
from eval.methods import SPECVLM, Method
from specvlm.tree_kinds import FLAG_TREES, SHAPE_FLAGS, TREE_KINDS, TREE_NAMES, tree_kind
from specvlm.trees import make_tree, tree_from_spec

ROOT = Path(__file__).resolve().parents[1]


def test_registry_and_parsers_import_without_torch() -> None:
    code = (
        "import sys, specvlm.tree_kinds, eval.bench, eval.specbench, eval.cnn_text;"
        "eval.bench.build_parser().format_help(); eval.cnn_text.build_parser().format_help();"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_registry_names_the_trees_and_flags_as_before() -> None:
    assert TREE_NAMES == TREE_CHOICES == ("ar", "chain", "static", "dynamic", "opt")
    assert TREE_FLAGS is FLAG_TREES
    assert list(FLAG_TREES.items()) == [  # in this order: the order the flag messages list them in
        ("depth", ("chain", "dynamic")),
        ("budget", ("dynamic",)),
        ("nodes", ("opt",)),
        ("threshold", ("opt",)),
        ("max_depth", ("opt",)),
        ("branching", ("static",)),
    ]
    dests = {flag.dest for flag in SHAPE_FLAGS}
    assert all(set(kind.flags) <= dests for kind in TREE_KINDS), "every shaping flag is a registered flag"


def test_names_and_aliases_make_their_builders() -> None:
    assert make_tree("ar") == make_tree("Autoregressive") == make_tree(" none ") == specvlm.Autoregressive()
    assert make_tree("opt") == make_tree("opttree") == make_tree("OPT-Tree") == specvlm.OptTree()
    assert make_tree("chain") == specvlm.ChainTree() and make_tree("dynamic") == specvlm.DynamicTree()
    assert make_tree("static").name == "static" and make_tree(None) == make_tree("static")
    assert tree_kind("bushy") is None
    with pytest.raises(specvlm.ConfigError, match="unknown tree 'bushy': choose one of ar, chain, static"):
        make_tree("bushy")
    assert tree_from_spec({"name": "opt", "nodes": 9}) == specvlm.OptTree(nodes=9)
    with pytest.raises(specvlm.ConfigError, match="must name one of chain, static, dynamic, opt"):
        tree_from_spec({"name": "ar"})  # a saved draft names a drafted tree


def test_method_labels() -> None:
    assert Method("hf_generate").label == "hf_generate"
    assert Method(SPECVLM, "dynamic").label == "specvlm-dynamic"
    assert Method(SPECVLM, "ar", "ngram").label == "specvlm-ar[ngram]"
    full = Method(SPECVLM, "dynamic", "trained", packed=False, fixed=True)
    assert full.label == "specvlm-dynamic[trained]-unpacked-fixed" and full.hf is None
    assert Method(SPECVLM, "opt", fixed=True).label == "specvlm-opt-fixed"
    with pytest.raises(ValueError, match="needs a tree"):
        Method(SPECVLM)
    with pytest.raises(ValueError, match="takes no tree"):
        Method("hf_generate", tree="chain")
