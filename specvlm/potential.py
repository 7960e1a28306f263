"""KL draft potential: how close a draft's next-token distributions q are to the target's p, teacher-forced.

p = target, q = draft. Both models read the same token sequences in one forward each (no decoding loop); at every
position the target's and the draft's distributions for the next token are compared:

- `kl`: mean over positions of KL(P || Q) = sum_x p(x) (log p(x) - log q(x)), at a temperature (both logits / T).
  q may be 0 where p > 0 (a draft with a smaller vocabulary, an n-gram draft that proposes nothing): q is floored at
  `Q_FLOOR` = 1e-10 (not renormalised), so each such token adds at most p(x) (log p(x) + 23.03) instead of infinity.
- `acceptance_rate`: mean of sum_x min(p(x), q(x)) = 1 - TV(P, Q), the exact probability that speculative sampling
  accepts one token drawn from q (Leviathan et al.), at the same temperature.
- `greedy_agreement`: how often the argmaxes agree, the acceptance rate of one greedy drafted token.

Which sequences (`potentials(..., continuations=)`): "target" scores the positions that predict the target's own
greedy continuation of each prompt (what a greedy speculative decoder must draft: the better-founded score), and
also reports the prompt positions; "prompt" scores the prompt positions only (the seed study's score). Prompts are
batched with right padding; every sum runs in float64 per position, so the scores do not depend on the batch size.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from .drafting import Drafter
from .errors import ConfigError
from .models import TargetModel

#: the smallest draft probability used in the KL (q = 0 where p > 0 would make the KL infinite)
Q_FLOOR = 1e-10
#: positions per chunk when comparing distributions (bounds the [chunk, V] temporaries)
CHUNK = 256


# -- distributions (pure functions) --------------------------------------------------------------------------------
def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) in float32; a row of only -inf (proposes nothing) gives -inf everywhere.  [N, V]"""
    out = torch.log_softmax(logits.float() / temperature, dim=-1)  # [N, V]
    return out.nan_to_num(nan=-math.inf)


def kl_of_log_probs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) at every position from log probabilities, q floored at Q_FLOOR.  [N, V] each -> [N] (float64)."""
    p = logp.exp()  # [N, V]
    gap = logp - logq.clamp_min(math.log(Q_FLOOR))  # [N, V]
    return torch.where(p > 0, p * gap, torch.zeros_like(p)).double().sum(dim=-1)  # [N]; 0 log 0 = 0


def position_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(P || Q) at every position, q floored at Q_FLOOR.  p_logits, q_logits [N, V] -> [N] (float64)."""
    return kl_of_log_probs(log_probs(p_logits, temperature), log_probs(q_logits, temperature))


def position_acceptance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_x min(p, q) = 1 - TV(P, Q) at every position.  p, q probabilities [N, V] -> [N] (float64)."""
    return torch.minimum(p, q).double().sum(dim=-1)  # [N]


def position_agreement(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """1.0 where the argmaxes agree, else 0.0.  [N, V] -> [N] (float64)."""
    return (p_logits.argmax(dim=-1) == q_logits.argmax(dim=-1)).double()  # [N]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean over positions of KL(P_target || Q_draft) at `temperature`, q floored at Q_FLOOR.  [N, V] each."""
    return float(position_kl(p_logits, q_logits, temperature).mean())


def acceptance_rate(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over positions of sum_x min(p, q) = 1 - TV(P, Q): speculative sampling's per-token acceptance
    probability.  p, q probabilities [N, V]."""
    return float(position_acceptance(p, q).mean())


def greedy_agreement(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Fraction of positions where the target's and the draft's argmax agree.  [N, V] each."""
    return float(position_agreement(p_logits, q_logits).mean())


def fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Draft logits over the target's vocabulary: missing ids get -inf, ids beyond it are dropped.  [L, V]"""
    have = logits.shape[-1]
    if have >= vocab:
        return logits[..., :vocab]
    pad = torch.full((*logits.shape[:-1], vocab - have), -math.inf, dtype=logits.dtype, device=logits.device)
    return torch.cat([logits, pad], dim=-1)


# -- hand-offs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionScores:
    """Scores over one set of positions (means over positions, pooled across sequences)."""

    kl: float
    acceptance: float
    agreement: float
    positions: int


@dataclass(frozen=True)
class PotentialScores:
    """One draft's potential for one target: on the target's greedy continuations and on the prompts."""

    name: str
    temperature: float
    prompt: RegionScores  # positions that predict prompt tokens 1 .. P-1
    continuation: RegionScores | None  # positions that predict the continuation (None with continuations="prompt")

    @property
    def main(self) -> RegionScores:
        """The continuation scores when there are any, else the prompt scores."""
        return self.continuation if self.continuation is not None else self.prompt


@dataclass
class _Sums:
    kl: float = 0.0
    acceptance: float = 0.0
    agreement: float = 0.0
    positions: int = 0

    def add(self, p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> None:
        for lo in range(0, p_logits.shape[0], CHUNK):
            p_rows, q_rows = p_logits[lo : lo + CHUNK], q_logits[lo : lo + CHUNK]  # [C, V]
            logp, logq = log_probs(p_rows, temperature), log_probs(q_rows, temperature)  # [C, V]
            self.kl += float(kl_of_log_probs(logp, logq).sum())
            self.acceptance += float(position_acceptance(logp.exp(), logq.exp()).sum())
            self.agreement += float(position_agreement(p_rows, q_rows).sum())
            self.positions += p_rows.shape[0]

    def scores(self) -> RegionScores:
        n = max(self.positions, 1)
        return RegionScores(self.kl / n, self.acceptance / n, self.agreement / n, self.positions)


# -- the driver ----------------------------------------------------------------------------------------------------
Continuations = Literal["target", "prompt"] | Sequence[Sequence[int]]


@torch.inference_mode()
def greedy_continuations(
    target: TargetModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    model_inputs: Sequence[Mapping[str, Any]] | None = None,
) -> list[list[int]]:
    """The target's own greedy continuation of each prompt (one at a time, so no padding can change a token)."""
    eos = sorted(target.eos)
    out = []
    for i, ids in enumerate(prompts):
        input_ids = torch.tensor([list(ids)], device=target.device)  # [1, P]
        generated = target.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,
            **(dict(model_inputs[i]) if model_inputs is not None else {}),
        )
        out.append(generated[0, input_ids.shape[1] :].tolist())
    return out


def _sequence_logits(draft: Drafter, name: str, ids: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    try:
        return draft.sequence_logits(ids, hidden if getattr(draft, "needs_target_hidden", False) else None)
    except NotImplementedError as err:
        raise ConfigError(
            f"draft {name!r} ({type(draft).__name__}) cannot score whole sequences, so it has no KL potential: "
            "use a model draft, a layer-skip draft or an n-gram draft"
        ) from err


def _target_batch(
    target: TargetModel, seqs: list[list[int]], inputs: list[Mapping[str, Any]], hidden: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One right-padded forward: (logits [B, L, V], last hidden states [B, L, H] or None)."""
    width = max(len(s) for s in seqs)
    pad = 1 if target.image_token_id == 0 else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, L]
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    extra: dict[str, Any] = {}
    for key in inputs[0] if inputs else ():  # pixel values etc.: one entry per image, in prompt order
        extra[key] = torch.cat([torch.as_tensor(x[key]) for x in inputs])
    out = target.model(
        input_ids=ids.to(target.device),
        attention_mask=mask.to(target.device),
        use_cache=False,
        output_hidden_states=hidden,
        **extra,
    )
    return out.logits.float(), (out.hidden_states[-1] if hidden else None)


@torch.inference_mode()
def potentials(
    target: TargetModel | PreTrainedModel,
    drafts: Mapping[str, Drafter],
    prompts: Sequence[Sequence[int]],
    *,
    continuations: Continuations = "target",
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 4,
    model_inputs: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> list[PotentialScores]:
    """Each draft's potential over the same teacher-forced sequences (one target forward per batch for all drafts).

    `continuations`: "target" (the target's greedy continuations, up to `max_new_tokens` each), "prompt" (prompts
    only), or the continuation token lists themselves (e.g. a decoder's greedy output). `model_inputs` holds, for a
    VLM target, each prompt's pixel inputs (`ImagePrompt.model_inputs()`); the image prefix is part of the target's
    forward, drafts read the text positions only, and a continuation is cut before any image token it generated.
    """
    if isinstance(target, PreTrainedModel):
        target = TargetModel(target)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"the potential's temperature must be a number > 0, got {temperature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not prompts or any(len(p) < 1 for p in prompts):
        raise ConfigError("give at least one prompt, each with at least one token")
    if not drafts:
        raise ConfigError("give at least one draft")
    if model_inputs is not None and len(model_inputs) != len(prompts):
        raise ConfigError(f"{len(model_inputs)} model_inputs for {len(prompts)} prompts: give one per prompt")
    if target.image_token_id is not None and model_inputs is None:
        raise ConfigError("this target is a vision-language model: pass each prompt's image inputs as model_inputs")
    if continuations == "target":
        conts: Sequence[Sequence[int]] = greedy_continuations(target, prompts, max_new_tokens, model_inputs)
    elif continuations == "prompt":
        conts = [[] for _ in prompts]
    elif isinstance(continuations, str):
        raise ConfigError(f"continuations must be 'target', 'prompt' or token lists, got {continuations!r}")
    else:
        conts = continuations
        if len(conts) != len(prompts):
            raise ConfigError(f"{len(conts)} continuations for {len(prompts)} prompts: give one per prompt")
    if target.image_token_id is not None:  # a generated image token would have no image features: stop before it
        conts = [[*c][: [*c].index(target.image_token_id)] if target.image_token_id in c else c for c in conts]
    seqs = [[*map(int, p), *map(int, c)] for p, c in zip(prompts, conts, strict=True)]
    too_long = [len(s) for s in seqs if len(s) > target.max_positions]
    if too_long:
        raise ConfigError(f"a sequence has {too_long[0]} tokens, more than the target's {target.max_positions}")
    hidden = any(getattr(d, "needs_target_hidden", False) for d in drafts.values())
    sums = {name: (_Sums(), _Sums()) for name in drafts}  # (prompt, continuation)
    bar = tqdm(total=len(seqs), desc="potential", unit="seq", file=sys.stderr, disable=not progress)
    for lo in range(0, len(seqs), batch_size):
        batch = seqs[lo : lo + batch_size]
        inputs = list(model_inputs[lo : lo + batch_size]) if model_inputs is not None else []
        logits, states = _target_batch(target, batch, inputs, hidden)  # [B, L, V], [B, L, H] or None
        for row, seq in enumerate(batch):
            ids = torch.tensor(seq)  # [L]
            text = ids != target.image_token_id if target.image_token_id is not None else torch.ones_like(ids).bool()
            # position i predicts seq[i + 1]; a text-only draft reads the text positions, at its own indices
            rows = torch.nonzero(text[:-1] & text[1:]).flatten()  # [K] target positions
            draft_rows = (text.cumsum(0) - 1)[rows]  # [K] the same positions among the text tokens
            in_prompt = rows < len(prompts[lo + row]) - 1  # [K]
            p = logits[row, : len(seq)][rows]  # [K, V]
            h = states[row, : len(seq)][text] if states is not None else None  # [L_text, H]
            for name, draft in drafts.items():
                q = fit_vocab(_sequence_logits(draft, name, ids[text], h).float(), target.vocab_size)  # [L_text, V]
                q = q.to(p.device)[draft_rows]  # [K, V]
                prompt_sums, cont_sums = sums[name]
                prompt_sums.add(p[in_prompt], q[in_prompt], temperature)
                cont_sums.add(p[~in_prompt], q[~in_prompt], temperature)
        bar.update(len(batch))
    bar.close()
    with_cont = continuations != "prompt"
    return [
        PotentialScores(name, float(temperature), prompt.scores(), cont.scores() if with_cont else None)
        for name, (prompt, cont) in sums.items()
    ]


def potential(
    target: TargetModel | PreTrainedModel, draft: Drafter, prompts: Sequence[Sequence[int]], **options: Any
) -> PotentialScores:
    """One draft's potential; `options` are `potentials`' keywords (continuations, temperature, max_new_tokens,
    batch_size, model_inputs, progress)."""
    return potentials(target, {getattr(draft, "name", type(draft).__name__): draft}, prompts, **options)[0]
