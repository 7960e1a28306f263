"""What both trainers (training/feature_draft.py, training/exits.py) share: config, data split, batching, schedule.

`TrainConfig` is the one configuration `python -m training.train` fills (for a feature draft, or `--exits` for
layer-skip exits); `Example` is one self-distillation record as token ids (plus target features where the trainer
caches them); the rest splits records, picks the reduced head, batches by length and steps the optimizer.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

CLI = "python -m training.train"


@dataclass
class Example:
    ids: torch.Tensor  # [L] token ids (prompt + response)
    feats: torch.Tensor  # [L, H] target last hidden states (final-normed), bfloat16
    start: int  # first position whose next token is a response token (prompt_len - 1)


@dataclass
class TrainConfig:
    data: list[str]  # self-distillation JSONL files
    out: str
    head_size: int = 8192
    layers: int = 1
    levels: int = 3
    level_decay: float = 0.8
    reg_weight: float = 1.0
    lr: float = 1e-3
    batch_tokens: int = 4096
    epochs: float = 3.0
    minutes: float = 0.0  # > 0: stop after this long (the cosine then ends with the budget)
    val_share: float = 0.05
    init: str = "last-layer"
    init_from: str | None = None  # a saved feature draft to continue from (its weights and reduced head)
    head_from_data: bool = False  # with init_from: pick the reduced head from this run's data instead of keeping it
    eval_every: int = 200
    seed: int = 0
    threads: int = 0
    target: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    autocast: str = "off"  # "bf16": the training forward and backward under bfloat16 autocast (weights stay float32)
    device: str | None = None  # None: cuda when available, else cpu (the target, the draft and every batch)
    exits: str = ""  # "16,24,28": train layer-skip exits (training/exits.py) instead of a feature draft
    val_records: int = 0  # > 0: score held-out agreement on this many held-out records only


# -- data ------------------------------------------------------------------------------------------------------
def split(records: list[dict[str, Any]], val_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A random held-out share of the records (all of it text the target wrote; never the evaluation prompts).

    Records with the same token ids (one prompt answered by two workers) count once, so none sits on both sides."""
    records = list({tuple(r["ids"]): r for r in records}.values())
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(records) * val_share))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def head_tokens(examples: list[Example], size: int, always: list[int], fill: list[int] | None = None) -> torch.Tensor:
    """The draft's reduced output vocabulary: the stop tokens and the `size` most frequent response tokens.

    With `fill` (a saved draft's head, when continuing it on new data): the stop tokens, then every response token
    seen at least twice (most frequent first), then `fill`'s tokens, then the tokens seen once, `size` in all."""
    counts: Counter[int] = Counter()
    for e in examples:
        counts.update(e.ids[e.start + 1 :].tolist())
    ranked = [t for t, _ in counts.most_common()]
    if fill is not None:
        ranked = [t for t in ranked if counts[t] >= 2] + list(fill) + [t for t in ranked if counts[t] < 2]
    chosen = list(dict.fromkeys([*always, *ranked]))[:size]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def length_groups(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length, grouped so that a group padded to its longest member holds <= `batch_tokens`
    tokens (a longer single item gets a group of its own)."""
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if cur and (len(cur) + 1) * lengths[i] > batch_tokens:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups


def batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Length-sorted batches of about `batch_tokens` padded tokens, in random order."""
    out = [[examples[i] for i in g] for g in length_groups([len(e.ids) for e in examples], batch_tokens)]
    rng.shuffle(out)
    return out


# -- optimisation ----------------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int, total_steps: int, elapsed: float) -> float:
    """Linear warm-up, then a cosine to 0 over the steps or the --minutes budget, whichever ends first."""
    warmup = min(100, total_steps // 10)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    done = (step - warmup) / max(1, total_steps - warmup)
    if cfg.minutes:
        done = max(done, elapsed / (cfg.minutes * 60))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def optimizer_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor, lr: float) -> None:
    """One step at learning rate `lr`, the gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """bfloat16 autocast on the training device when `--autocast bf16` (a no-op context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
