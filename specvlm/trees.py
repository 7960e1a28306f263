"""Tree names users type (`tree="opt"`) turned into builder objects, by the registry in `specvlm.tree_kinds`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .builders import TreeBuilder
from .errors import ConfigError
from .tree_kinds import SAVED_NAMES, TREE_NAMES, named_kind, tree_kind

__all__ = ["TREE_NAMES", "at_fixed_size", "make_tree", "tree_from_spec"]


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
    kind = tree_kind(tree)
    if kind is None:
        raise ConfigError(f"unknown tree {tree!r}: choose one of {', '.join(TREE_NAMES)} or pass a builder object")
    return kind.plain()


def tree_from_spec(spec: dict[str, Any]) -> TreeBuilder:
    """A builder from a JSON-able spec saved with a draft, e.g. {"name": "chain", "depth": 8} or
    {"name": "static", "branching": [2, 1, 1]}."""
    kwargs = dict(spec)
    name = str(kwargs.pop("name", ""))
    kind = named_kind(name)
    if kind is None or not kind.saved:
        raise ConfigError(f"a draft's default tree {spec!r} must name one of {', '.join(SAVED_NAMES)}")
    try:
        return kind.make(**kwargs)
    except TypeError as err:
        raise ConfigError(f"a draft's default tree {spec!r} has arguments {name} does not take: {err}") from err
