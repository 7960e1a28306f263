"""Published Medusa-1 heads (`medusa_lm_head.pt`, config `medusa_num_heads` / `medusa_num_layers`) as a drafter.

Head i (0-based) reads the target's last hidden state h (final-normed) at position t and predicts token t + 2 + i:
`medusa_num_layers` residual blocks x + SiLU(W x + b) (keys `{i}.{j}.linear.weight` / `.bias`), then an output
projection `{i}.{medusa_num_layers}.weight` [V, H]. The root of a tree is the token at t + 1 (the target's own
prediction), so the nodes at depth d propose with head d - 1's distribution, the same for every parent at that
depth; below the last head nothing is proposed. Trees: any kind; Medusa's published tree choices as static trees
(`specvlm.tree_choices`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from specvlm.drafting import DraftContext, Drafter, DraftSession
from specvlm.errors import ConfigError, ModelLoadError
from specvlm.models import TargetModel

from .published import Checkpoint


class MedusaHeads:
    """The heads' weights in the target's dtype: per head, its residual blocks [(W [H, H], b [H])] and output [V, H]."""

    def __init__(self, ck: Checkpoint, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device):
        heads = ck.config.get("medusa_num_heads")
        layers = ck.config.get("medusa_num_layers")
        if heads is None:  # a config-less head file: count the heads and blocks from the key names
            heads = 1 + max(int(k.split(".")[0]) for k in ck.weights)
        if layers is None:
            layers = max(int(k.split(".")[1]) for k in ck.weights if k.startswith("0."))
        self.blocks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.out: list[torch.Tensor] = []
        for i in range(int(heads)):
            blocks = []
            for j in range(int(layers)):
                w, b = ck.tensor(f"{i}.{j}.linear.weight"), ck.tensor(f"{i}.{j}.linear.bias")
                if tuple(w.shape) != (hidden, hidden):
                    raise ModelLoadError(
                        f"{ck.folder}: head {i} block {j} is {list(w.shape)}, the target's hidden size is {hidden}"
                    )
                blocks.append((w.to(device, dtype), b.to(device, dtype)))
            out = ck.tensor(f"{i}.{layers}.weight")
            if tuple(out.shape) != (vocab, hidden):
                raise ModelLoadError(
                    f"{ck.folder}: head {i} projects to {list(out.shape)}; this target needs [{vocab}, {hidden}] "
                    "(its vocabulary and hidden size): the heads were made for another target"
                )
            self.blocks.append(blocks)
            self.out.append(out.to(device, dtype))

    @property
    def count(self) -> int:
        return len(self.out)

    @torch.inference_mode()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every head's logits from one hidden state: [H] -> [heads, V] (float32)."""
        rows = []
        for blocks, out in zip(self.blocks, self.out, strict=True):
            x = hidden.to(out.dtype)  # [H]
            for w, b in blocks:
                x = x + F.silu(F.linear(x, w, b))
            rows.append(F.linear(x, out).float())  # [V]
        return torch.stack(rows)


class MedusaSession(DraftSession):
    """The heads' distributions from the hidden state before the root, recomputed after every commit."""

    supports_skips = True  # no cache: a node's row depends on its depth alone

    def __init__(self, heads: MedusaHeads, vocab: int, before_root: torch.Tensor | None):
        self.heads, self.vocab = heads, vocab
        self.hidden: torch.Tensor | None = None
        self.rows = heads(before_root) if before_root is not None else None  # [heads, V]

    def logits(self, nodes: list[int], tokens: list[int], parents: list[int]) -> torch.Tensor:
        out = torch.full((len(nodes), self.vocab), -math.inf)
        for row, node in enumerate(nodes):
            depth, cur = 0, node
            while parents[cur] >= 0:
                cur, depth = parents[cur], depth + 1
            if self.rows is not None and depth < self.heads.count:
                out[row] = self.rows[depth].cpu()  # children of a depth-d node sit at t + 2 + d: head d
        return out

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden

    def commit(self, path: list[int], new_tokens: list[int]) -> None:
        if self.hidden is None:
            raise RuntimeError("the Medusa draft needs the target's hidden states of the scored tree")
        self.rows = self.heads(self.hidden[path[-1]])  # the last kept node: the position before the next root
        self.hidden = None


class MedusaDrafter(Drafter):
    """Medusa-1 heads on the target's last hidden state."""

    needs_target_hidden = True
    handles_images = True  # it reads only the target's hidden states, image positions included

    def __init__(self, ck: Checkpoint, target: TargetModel, name: str | None = None):
        text = target.model.config.get_text_config()
        head = target.model.get_output_embeddings().weight
        self.name = name or f"medusa:{ck.folder.name}"
        self.vocab = int(head.shape[0])  # the width of the target's logits
        self.heads = MedusaHeads(ck, int(text.hidden_size), self.vocab, head.dtype, head.device)

    def session(self, context: DraftContext) -> DraftSession:
        hidden = context.target_hidden
        if hidden is None:
            raise ConfigError("the Medusa draft needs the target's hidden states: use it through specvlm")
        return MedusaSession(self.heads, self.vocab, hidden[-1] if hidden.shape[0] else None)
