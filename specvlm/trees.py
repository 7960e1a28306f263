"""Tree names users type (`tree="opt"`) turned into builder objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .builders import Autoregressive, BranchingTree, ChainTree, DynamicTree, OptTree, TreeBuilder
from .errors import ConfigError

#: the default static shape until a planned growmap replaces it: wide near the root, a long spine
DEFAULT_BRANCHING = (4, 2, 2, 1, 1, 1, 1)

TREE_NAMES = ("ar", "chain", "static", "dynamic", "opt")


def at_fixed_size(tree: TreeBuilder) -> TreeBuilder:
    """The builder with its ceilings as its sizes (`hardware_aware=False`); a builder that never sizes itself for
    tokens/s comes back as it is."""
    return dataclasses.replace(tree, hardware_aware=False) if tree.hardware_aware else tree  # type: ignore[type-var]


def make_tree(tree: TreeBuilder | str | None, default: TreeBuilder | None = None) -> TreeBuilder:
    """A builder from a builder, a name, or None (the decoder's default)."""
    if isinstance(tree, TreeBuilder):
        return tree
    if tree is None:  # the planned static tree: the best tokens/s measured on this CPU (docs/performance.md)
        return default if default is not None else make_tree("static")
    if not isinstance(tree, str):
        raise ConfigError(f"tree must be a name {TREE_NAMES} or a builder object, got {type(tree).__name__}")
    name = tree.strip().lower()
    if name in ("ar", "autoregressive", "none"):
        return Autoregressive()
    if name == "chain":
        return ChainTree()
    if name == "static":
        from .builders.static import StaticTree, shipped_growmap

        return StaticTree() if shipped_growmap() is not None else BranchingTree(DEFAULT_BRANCHING)
    if name == "dynamic":
        return DynamicTree()
    if name in ("opt", "opttree", "opt-tree"):
        return OptTree()
    raise ConfigError(f"unknown tree {tree!r}: choose one of {', '.join(TREE_NAMES)} or pass a builder object")


#: builders a saved draft may name as its default tree, with their keyword arguments
_BUILDERS: dict[str, Callable[..., TreeBuilder]] = {
    "chain": ChainTree,
    "static": BranchingTree,
    "dynamic": DynamicTree,
    "opt": OptTree,
}


def tree_from_spec(spec: dict[str, Any]) -> TreeBuilder:
    """A builder from a JSON-able spec saved with a draft, e.g. {"name": "chain", "depth": 8} or
    {"name": "static", "branching": [2, 1, 1]}."""
    kwargs = dict(spec)
    name = str(kwargs.pop("name", ""))
    if name not in _BUILDERS:
        raise ConfigError(f"a draft's default tree {spec!r} must name one of {', '.join(_BUILDERS)}")
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"a draft's default tree {spec!r} has arguments {name} does not take: {err}") from err
