"""Several draft sources in one tree: q = the weighted mixture of their distributions at every node.

On summaries most easy tokens are copies from the article (prompt n-grams find them) while a model draft knows the
language: mixing both lets one verification try either.  A source that proposes nothing at a node (a row of -inf,
e.g. no n-gram match) drops out there and the others are renormalised.  The mixture is a proper distribution, so
sampled trees stay lossless.

`copy_gate=n`: where a weight-free source (prompt n-grams, the suffix automaton, a datastore: every
`LookupSession`) matches at least n tokens, q is that source's alone and the other sources are not asked there, so
copied chains cost no model-draft forward; where several match, the longest match wins (ties: the one listed
first). It applies only when every other source's session `supports_skips` (the feature draft does; a ModelDrafter
does not, and with one the mixture always mixes).  q is still a proper distribution at every node (which source
gives it is decided from the context alone), so verification stays exact.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from specvlm.drafting import DraftContext, Drafter, DraftSession

from .lookup import LookupSession


def mix_logits(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """log sum_i w_i softmax(parts_i), over the sources that propose something in each row: [K, V] each -> [K, V]."""
    width = max(p.shape[-1] for p in parts)
    total = torch.zeros(parts[0].shape[0], width)
    mass = torch.zeros(parts[0].shape[0], 1)
    for logits, w in zip(parts, weights, strict=True):
        logits = logits.float().cpu()
        live = torch.isfinite(logits).any(dim=-1, keepdim=True)  # [K, 1] rows where this source proposes
        q = torch.where(live, torch.softmax(logits.masked_fill(~live, 0.0), dim=-1), 0.0)  # [K, V_i]
        total[:, : q.shape[-1]] += w * q
        mass += w * live
    q = total / mass.clamp(min=1e-12)
    return torch.where(q > 0, q.log(), torch.full_like(q, -math.inf)).to(parts[0].device)


def joined_layers(drafters: list[Drafter]) -> tuple[int, ...]:
    """The target layers a mixture asks for: every hidden-state part's `target_layers`, each layer once, in order."""
    out: list[int] = []
    for d in drafters:
        if d.needs_target_hidden:
            out += [i for i in d.target_layers if i not in out]
    return tuple(out) or (-1,)


def layer_slice(states: torch.Tensor, have: tuple[int, ...], want: tuple[int, ...]) -> torch.Tensor:
    """The columns of `want` out of hidden states laid side by side as `have`: [N, len(have) H] -> [N, len(want) H]."""
    if want == have:
        return states
    width = states.shape[-1] // len(have)
    return torch.cat([states[:, have.index(i) * width : (have.index(i) + 1) * width] for i in want], dim=-1)


class MixtureSession(DraftSession):
    def __init__(
        self,
        sessions: list[DraftSession],
        weights: list[float],
        copy_gate: int = 0,
        layers: list[tuple[tuple[int, ...], tuple[int, ...]] | None] | None = None,
    ):
        self.sessions = sessions
        self.layers = layers or [None] * len(sessions)  # per session: (the mixture's layers, its own), or None
        self.weights = weights
        self.wants_target_feedback = any(s.wants_target_feedback for s in sessions)
        lookups = [s for s in sessions if isinstance(s, LookupSession)] if copy_gate else []
        # gate only when every other source can be left out at some nodes and steps (a ModelSession cannot)
        others_skip = all(s.supports_skips for s in sessions if s not in lookups)
        self.lookups = lookups if others_skip else []
        self.copy_gate = copy_gate

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        if not self.lookups:
            return mix_logits([s.logits(nodes, tokens, parents) for s in self.sessions], self.weights)
        found = [s.proposals(nodes, tokens, parents) for s in self.lookups]  # per lookup: lengths [K], logs [K, V]
        width = max(logs.shape[-1] for _, logs in found)
        out = torch.full((len(nodes), width), -math.inf)  # [K, W]
        rest: list[int] = []  # rows where no free source matches copy_gate tokens: every source is asked
        for row in range(len(nodes)):
            lengths = [lens[row] for lens, _ in found]
            best = max(range(len(lengths)), key=lambda i: (lengths[i], -i))  # the longest; ties: the first
            if lengths[best] >= self.copy_gate:
                q = found[best][1][row : row + 1]  # [1, V_i]
                out[row, : q.shape[-1]] = mix_logits([q], [1.0])[0]
            else:
                rest.append(row)
        if rest:
            rest_nodes = [nodes[i] for i in rest]
            asked = {id(s): logs[rest] for s, (_, logs) in zip(self.lookups, found, strict=True)}
            parts = [asked[id(s)] if id(s) in asked else s.logits(rest_nodes, tokens, parents) for s in self.sessions]
            mixed = mix_logits(parts, self.weights)  # [R, W'], W' >= V
            if mixed.shape[-1] > out.shape[-1]:
                out = torch.cat([out, out.new_full((len(nodes), mixed.shape[-1] - width), -math.inf)], dim=-1)
            out[rest, : mixed.shape[-1]] = mixed.to(out.device)
        return out

    def observe(self, tokens: list[int], parents: list[int], target_top: list[int]) -> None:
        for s in self.sessions:
            if s.wants_target_feedback:
                s.observe(tokens, parents, target_top)

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        for s, layers in zip(self.sessions, self.layers, strict=True):
            if layers is not None:
                s.observe_hidden(layer_slice(hidden, *layers))

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        for s in self.sessions:
            s.commit(path, new_tokens)


class MixtureDrafter(Drafter):
    """`MixtureDrafter([feature_draft, NGramDrafter()], [0.5, 0.5])`, or `draft="trained+ngram"`.

    `copy_gate` (default 2, 0 = off): where an n-gram source matches at least that many tokens, the other sources
    are not asked: a long copy is taken anyway, so skipping the model draft's forward there saves time and, on news,
    raises tokens per call (docs/performance.md, "The copy gate")."""

    def __init__(self, drafters: list[Drafter], weights: list[float] | None = None, copy_gate: int = 2):
        if copy_gate < 0:
            raise ValueError("copy_gate is an n-gram length (0: always mix every source)")
        if len(drafters) < 2:
            raise ValueError("a mixture needs at least two drafters")
        weights = weights or [1.0 / len(drafters)] * len(drafters)
        if len(weights) != len(drafters) or min(weights) <= 0:
            raise ValueError("one positive weight per drafter")
        self.drafters = drafters
        self.weights = [w / sum(weights) for w in weights]
        self.copy_gate = copy_gate
        self.name = "+".join(d.name for d in drafters)
        self.needs_target_hidden = any(d.needs_target_hidden for d in drafters)
        self.target_layers = joined_layers(drafters)  # each part is handed its own layers' columns
        self.handles_images = any(d.handles_images for d in drafters)  # each part gets the context it declared
        self.default_tree = next((d.default_tree for d in drafters if d.default_tree is not None), None)

    def session(self, context: DraftContext) -> DraftSession:
        sessions, layers = [], []
        for d in self.drafters:
            ctx = context.for_drafter(d)  # a text part sees the text only
            own = (self.target_layers, d.target_layers) if d.needs_target_hidden else None
            if own is not None and ctx.target_hidden is not None:
                ctx = dataclasses.replace(ctx, target_hidden=layer_slice(ctx.target_hidden, *own))
            sessions.append(d.session(ctx))
            layers.append(own)
        return MixtureSession(sessions, self.weights, self.copy_gate, layers)
