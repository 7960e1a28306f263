"""Tree builders: fixed shapes, growmap-driven static trees, dynamic (budget) trees and OPT-Tree."""

from __future__ import annotations

from .adaptive import DynamicTree, OptTree
from .base import TreeBuilder
from .growing import StepLimits
from .simple import Autoregressive, BranchingTree, ChainTree, TemplateTree

__all__ = [
    "Autoregressive",
    "BranchingTree",
    "ChainTree",
    "DynamicTree",
    "OptTree",
    "StepLimits",
    "TemplateTree",
    "TreeBuilder",
]
