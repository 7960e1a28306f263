"""`StaticTree`: a fixed tree shape read from a growmap file (our JSON, or Sequoia's .pt), planned offline."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, GrowmapError
from ..growmap import Growmap, check_parents, load_growmap
from .simple import BranchingTree, TemplateTree

#: the shipped default: planned for SmolLM2-135M + the n-gram draft on a CPU (see growmaps/README.md)
DEFAULT_GROWMAP = "smollm2-ngram-cpu.json"
GROWMAPS_PACKAGE = "growmaps"
#: the default static shape until a planned growmap replaces it: wide near the root, a long spine
DEFAULT_BRANCHING = (4, 2, 2, 1, 1, 1, 1)


def shipped_growmap(name: str = DEFAULT_GROWMAP) -> Path | None:
    """Path of a growmap shipped in the installed `growmaps` package (located, not imported), or None."""
    spec = importlib.util.find_spec(GROWMAPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    return None


def StaticTree(
    growmap: str | os.PathLike | Growmap | None = None, parents: Sequence[int] | None = None
) -> TemplateTree:
    """A fixed tree from a growmap file (None = the shipped default) or from explicit `parents`.

    Node 0 is the root, parents[i] < i, and a node's children in index order take its 1st, 2nd, ... most likely
    draft tokens. The result is a `TemplateTree` named "static".
    """
    if growmap is not None and parents is not None:
        raise ConfigError("StaticTree takes a growmap file or parents, not both")
    if parents is not None:
        return TemplateTree(parents=check_parents(parents, "StaticTree(parents=...)", ConfigError), name="static")
    if isinstance(growmap, Growmap):
        return TemplateTree(parents=growmap.parents, name="static")
    if growmap is None:
        growmap = shipped_growmap()
        if growmap is None:
            raise GrowmapError(
                f"the default growmap {GROWMAPS_PACKAGE}/{DEFAULT_GROWMAP} is not installed: pass "
                "StaticTree(growmap=PATH), or plan one with `python -m growmaps.plan`"
            )
    return TemplateTree(parents=load_growmap(growmap).parents, name="static")


def default_static_tree() -> TemplateTree:
    """The tree `tree="static"` names: the shipped growmap's, or BranchingTree(DEFAULT_BRANCHING) when the
    `growmaps` package is not installed."""
    return StaticTree() if shipped_growmap() is not None else BranchingTree(DEFAULT_BRANCHING)
