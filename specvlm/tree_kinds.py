"""The tree registry: every tree name users type, its aliases, its builder, and the CLI flags that shape it.

Torch-free: builders are named by import path and loaded on first use, so a CLI builds its parser from this
registry before torch is imported. `specvlm.trees` (make_tree, tree_from_spec) and `eval.common` (the --tree
choices, the shape flags, their checks and the builders they make) read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .builders import TreeBuilder

#: the argument types of the shape flags (eval.common maps them to its argparse type functions)
FlagValue = Literal["positive_int", "positive_int_list", "non_negative_float"]


@dataclass(frozen=True)
class ShapeFlag:
    """A CLI flag that shapes a tree: its argparse dest, its spellings, and the value it takes."""

    dest: str
    options: tuple[str, ...]
    value: FlagValue
    metavar: str
    help: str


@dataclass(frozen=True)
class TreeKind:
    """A tree name: its aliases, the builder its shape keywords go to, and the flags that shape it.

    `builder` and `default` are "module:attribute" paths, imported on first use. `default` makes the builder for
    the bare name (None: `builder()`); `shape` maps each flag's argparse dest to the builder's keyword; `saved`: a
    saved draft may name this tree as its default (specvlm.trees.tree_from_spec)."""

    name: str
    builder: str
    aliases: tuple[str, ...] = ()
    shape: tuple[tuple[str, str], ...] = ()
    default: str | None = None
    saved: bool = True

    @property
    def flags(self) -> tuple[str, ...]:
        """The argparse dests of the flags that shape this tree."""
        return tuple(dest for dest, _ in self.shape)

    def make(self, **kwargs: Any) -> TreeBuilder:
        """The builder with these keyword arguments."""
        return _resolve(self.builder)(**kwargs)

    def plain(self) -> TreeBuilder:
        """The builder the bare name stands for."""
        return _resolve(self.default or self.builder)()

    def from_flags(self, values: Mapping[str, Any]) -> TreeBuilder:
        """The builder shaped by flag values (argparse dest -> value), each passed as its builder keyword."""
        keyword = dict(self.shape)
        return self.make(**{keyword[dest]: value for dest, value in values.items()})


def _resolve(path: str) -> Callable[..., TreeBuilder]:
    module, _, attribute = path.partition(":")
    builder: Callable[..., TreeBuilder] = getattr(importlib.import_module(module), attribute)
    return builder


#: the shape flags, in the order the CLIs list them in messages
SHAPE_FLAGS: tuple[ShapeFlag, ...] = (
    ShapeFlag("depth", ("--depth",), "positive_int", "INT", "chain (or dynamic tree): drafted levels"),
    ShapeFlag("budget", ("--B", "--budget"), "positive_int", "INT", "dynamic tree: token budget B"),
    ShapeFlag("nodes", ("--nodes",), "positive_int", "INT", "opt tree: nodes in the tree"),
    ShapeFlag("threshold", ("--threshold",), "non_negative_float", "FLOAT", "opt tree: stop growing when E gains less"),
    ShapeFlag("max_depth", ("--max-depth", "--max_depth"), "positive_int", "INT", "opt tree: deepest level"),
    ShapeFlag(
        "branching",
        ("--branching",),
        "positive_int_list",
        "LIST",
        "static tree: children per node at each level, e.g. 3,1,1,1 (3 first tokens, each a chain of 3)",
    ),
)

#: every tree, in the order users see them
TREE_KINDS: tuple[TreeKind, ...] = (
    TreeKind("ar", "specvlm.builders:Autoregressive", aliases=("autoregressive", "none"), saved=False),
    TreeKind("chain", "specvlm.builders:ChainTree", shape=(("depth", "depth"),)),
    # bare "static": the shipped growmap's tree, else BranchingTree(DEFAULT_BRANCHING) (builders/static.py)
    TreeKind(
        "static",
        "specvlm.builders:BranchingTree",
        shape=(("branching", "branching"),),
        default="specvlm.builders.static:default_static_tree",
    ),
    TreeKind("dynamic", "specvlm.builders:DynamicTree", shape=(("depth", "depth"), ("budget", "budget"))),
    TreeKind(
        "opt",
        "specvlm.builders:OptTree",
        aliases=("opttree", "opt-tree"),
        shape=(("nodes", "nodes"), ("threshold", "threshold"), ("max_depth", "max_depth")),
    ),
)

TREE_NAMES: tuple[str, ...] = tuple(kind.name for kind in TREE_KINDS)

#: the trees a saved draft may name as its default tree
SAVED_NAMES: tuple[str, ...] = tuple(kind.name for kind in TREE_KINDS if kind.saved)

#: which trees each shape flag applies to (argparse dest -> tree names)
FLAG_TREES: dict[str, tuple[str, ...]] = {
    flag.dest: tuple(kind.name for kind in TREE_KINDS if flag.dest in kind.flags) for flag in SHAPE_FLAGS
}

_BY_NAME: dict[str, TreeKind] = {kind.name: kind for kind in TREE_KINDS}
_BY_SPELLING: dict[str, TreeKind] = {spelling: kind for kind in TREE_KINDS for spelling in (kind.name, *kind.aliases)}


def tree_kind(name: str) -> TreeKind | None:
    """The tree a user's spelling names (a name or an alias, any case, spaces around ignored), or None."""
    return _BY_SPELLING.get(name.strip().lower())


def named_kind(name: str) -> TreeKind | None:
    """The tree of exactly this registered name (no aliases), or None."""
    return _BY_NAME.get(name)
