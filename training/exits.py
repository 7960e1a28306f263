"""Train the exits of layer-skip drafts (drafters/exits.py), all at once: `python -m training.train --exits 16,24,28`.

One frozen teacher-forced target pass per batch gives every kept layer's hidden state and the target's own
distribution; each exit K learns KL(p_target || q_K) over the reduced head on the response tokens (SD2's sorted
training, with the shared layers frozen so that the target, and so the output, never changes). Held-out top-1
agreement over the FULL vocabulary (what `draft="layerskip:K:FOLDER"` proposes from) is measured before the first
step (= the untrained layer-skip draft, as the exits start at the identity) and after the last.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from drafters.exits import ExitAdapter, ExitNorm, save_exits
from training.common import (
    CLI,
    Example,
    TrainConfig,
    autocast,
    batches,
    head_tokens,
    lr_at,
    optimizer_step,
    split,
)
from training.selfdistill import read_dataset


def parse_exits(spec: str, total: int) -> list[int]:
    """'16,24,28' -> [16, 24, 28]; every K must keep 1 .. total - 1 of the target's layers."""
    try:
        layers = sorted({int(k) for k in spec.split(",") if k.strip()})
    except ValueError as err:
        raise ValueError(f"--exits takes layer counts like 16,24,28, got {spec!r}") from err
    if not layers or not all(1 <= k < total for k in layers):
        raise ValueError(f"--exits: layer counts must lie in 1 .. {total - 1} (the target has {total}), got {spec!r}")
    return layers


def token_examples(records: list[dict[str, Any]]) -> list[Example]:
    """Records as `Example`s without target features (this trainer runs the target itself, batch by batch)."""
    return [Example(torch.tensor(r["ids"]), torch.empty(0), r["prompt_len"] - 1) for r in records]


@torch.no_grad()  # not inference_mode: the exits' backward saves these states
def layer_states(
    target: PreTrainedModel, rows: list[Example], layers: list[int]
) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The frozen target on right-padded rows: hidden states after each kept layer {K: [B, W, H]}, the final-normed
    last hidden state [B, W, H] and the response mask [B, W] (positions whose next token is a response token)."""
    width = max(len(e.ids) for e in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    resp = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, e in enumerate(rows):
        n = len(e.ids)
        ids[b, :n] = e.ids
        mask[b, :n] = 1
        resp[b, e.start : n - 1] = True
    dev = target.device
    out = target(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True, logits_to_keep=1)
    states = out.hidden_states  # embeddings, then one per layer; the last one final-normed
    return {k: states[k].clone() for k in layers}, states[-1].clone(), resp.to(dev)


def exit_losses(
    exits: dict[int, ExitNorm], states: dict[int, torch.Tensor], final: torch.Tensor, resp: torch.Tensor,
    head: torch.Tensor,
) -> tuple[dict[int, torch.Tensor], dict[int, float]]:  # fmt: skip
    """Per exit: KL(p_target || q_exit) over the head rows [K, H], averaged over response positions; and top-1
    agreement with the target over the head."""
    with torch.autocast(final.device.type, enabled=False):  # the target's distribution in its own precision
        p_log = F.log_softmax(final @ head.T, dim=-1)  # [B, W, K]
    p_top = p_log.argmax(-1)
    n = resp.sum().clamp(min=1)
    losses, agree = {}, {}
    for k, exit_norm in exits.items():
        q_log = F.log_softmax((exit_norm(states[k]) @ head.T).float(), dim=-1)  # [B, W, K]
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # [B, W]
        losses[k] = (kl * resp).sum() / n
        agree[k] = float(((q_log.argmax(-1) == p_top) & resp).sum() / n)
    return losses, agree


@torch.no_grad()
def exit_agreement(
    target: PreTrainedModel, exits: dict[int, ExitNorm], records: list[dict[str, Any]], batch_tokens: int
) -> dict[str, float]:
    """Held-out top-1 agreement of each exit with the target, both over the full vocabulary."""
    head = target.get_output_embeddings().weight
    hits = dict.fromkeys(exits, 0)
    total = 0
    for rows in batches(token_examples(records), batch_tokens, random.Random(0)):
        states, final, resp = layer_states(target, rows, sorted(exits))
        target_top = (final @ head.T).argmax(-1)  # [B, W]
        total += int(resp.sum())
        for k, exit_norm in exits.items():
            hits[k] += int((((exit_norm(states[k]) @ head.T).argmax(-1) == target_top) & resp).sum())
    return {f"agree_{k}": hits[k] / max(1, total) for k in sorted(exits)}


def train(target: PreTrainedModel, cfg: TrainConfig, log: Any, stops: list[int]) -> dict[str, Any]:
    """Train (or resume) one exit per `cfg.exits` layer count; saves the folder `cfg.out` (drafters/exits.py)."""
    torch.manual_seed(cfg.seed)
    total_layers = int(target.config.get_text_config().num_hidden_layers)
    layers = parse_exits(cfg.exits, total_layers)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for p in cfg.data for r in read_dataset(Path(p))]
    train_recs, val_recs = split(records, cfg.val_share, cfg.seed)
    val_recs = val_recs[: cfg.val_records] if cfg.val_records else val_recs
    examples = token_examples(train_recs)
    head_ids = head_tokens(examples, cfg.head_size, stops).to(target.device)
    head = target.get_output_embeddings().weight.detach()[head_ids]  # [K, H]
    hidden = head.shape[-1]
    norm = target.get_decoder().norm
    adapters = {k: ExitAdapter(hidden).to(target.device) for k in layers}
    exits = {k: ExitNorm(a, norm) for k, a in adapters.items()}
    params = [p for a in adapters.values() for p in a.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = random.Random(cfg.seed)
    total_steps = max(1, int(len(batches(examples, cfg.batch_tokens, rng)) * cfg.epochs))
    ckpt = out_dir / "checkpoint.pt"
    step = 0
    if ckpt.exists():  # resume
        state = torch.load(ckpt, weights_only=True, map_location=target.device)
        for k, a in adapters.items():
            a.load_state_dict(state["exits"][str(k)])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resumed from {ckpt} at step {step}", file=log, flush=True)
    history = [{"step": step, **exit_agreement(target, exits, val_recs, cfg.batch_tokens)}]
    print(json.dumps(history[-1]), file=log, flush=True)
    t0 = time.time()
    bar = tqdm(total=total_steps, initial=step, desc="training exits", unit="step", dynamic_ncols=True)
    out_of_time = False
    while step < total_steps and not out_of_time:
        for rows in batches(examples, cfg.batch_tokens, rng):
            states, final, resp = layer_states(target, rows, layers)
            with autocast(target.device, cfg):
                losses, agree = exit_losses(exits, states, final, resp, head)
            loss = sum(losses.values()) / len(losses)
            optimizer_step(opt, params, loss, lr_at(cfg, step, total_steps, time.time() - t0))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"a{k}": f"{a:.2f}" for k, a in agree.items()})
            out_of_time = bool(cfg.minutes) and time.time() - t0 > cfg.minutes * 60
            if step % cfg.eval_every == 0 or step >= total_steps or out_of_time:
                history.append({"step": step, "loss": loss.item(),
                                **exit_agreement(target, exits, val_recs, cfg.batch_tokens)})  # fmt: skip
                print(json.dumps(history[-1]), file=log, flush=True)
                state = {"exits": {str(k): a.state_dict() for k, a in adapters.items()}, "optimizer": opt.state_dict()}
                torch.save({**state, "step": step}, ckpt)
            if step >= total_steps or out_of_time:
                break
    bar.close()
    report = {
        "command": " ".join([CLI, *sys.argv[1:]]),
        "config": asdict(cfg),
        "records": len(records),
        "val_records": len(val_recs),
        "steps": step,
        "train_minutes": (time.time() - t0) / 60,
        "before": history[0],
        "final": history[-1],
        "history": history,
    }
    save_exits(
        out_dir, adapters, hidden, {"target": Path(str(getattr(target, "name_or_path", ""))).name, "steps": step}
    )
    (out_dir / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    ckpt.unlink(missing_ok=True)
    return report
