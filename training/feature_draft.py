"""Distil a feature draft (drafters/feature_draft.py) from its target; run by `python -m training.train`.

Data is the target's own greedy text (training/selfdistill.py; generated first when the first data file does not
exist). Steps: target features for every sequence (one teacher-forced pass, cached) -> reduced head = the most
frequent response tokens -> training with KL to the target's distribution (over the head) plus a feature
regression, unrolled for `--levels` drafting steps (level j sees its own predictions from level j - 1, as when it
drafts a chain) -> held-out top-1 agreement per level -> an HF-format folder that `specvlm.load(draft=PATH)` loads.
"""

from __future__ import annotations

import hashlib
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
from transformers import DynamicCache, PreTrainedModel

from drafters.feature_draft import FeatureDraftModel, draft_config, target_head
from training.common import (
    CLI,
    Example,
    TrainConfig,
    autocast,
    batches,
    head_tokens,
    length_groups,
    lr_at,
    optimizer_step,
    split,
)
from training.selfdistill import build_dataset, read_dataset


# -- data ------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def target_features(target: PreTrainedModel, records: list[dict[str, Any]], batch_tokens: int) -> list[Example]:
    """One teacher-forced target pass per batch (right padding): the final-normed last hidden state per token."""
    out: list[Example | None] = [None] * len(records)
    bar = tqdm(total=sum(len(r["ids"]) for r in records), desc="target features", unit="tok", dynamic_ncols=True)
    for group in length_groups([len(r["ids"]) for r in records], batch_tokens):
        rows = [records[k] for k in group]
        width = max(len(r["ids"]) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, : len(r["ids"])] = torch.tensor(r["ids"])
            mask[b, : len(r["ids"])] = 1
        hidden = target(input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                        output_hidden_states=True, logits_to_keep=1)  # fmt: skip
        last = hidden.hidden_states[-1]  # [B, W, H]
        for b, (k, r) in enumerate(zip(group, rows, strict=True)):
            n = len(r["ids"])
            out[k] = Example(torch.tensor(r["ids"]), last[b, :n].to("cpu", torch.bfloat16).clone(), r["prompt_len"] - 1)
        bar.update(int(mask.sum()))
    bar.close()
    return [e for e in out if e is not None]


def save_examples(path: Path, train_ex: list[Example], val_ex: list[Example]) -> None:
    """Tensors only, so the cache loads with weights_only=True."""
    pack = {
        name: {"ids": [e.ids for e in ex], "feats": [e.feats for e in ex], "start": torch.tensor([e.start for e in ex])}
        for name, ex in (("train", train_ex), ("val", val_ex))
    }
    torch.save(pack, path)


def load_examples(path: Path) -> tuple[list[Example], list[Example]]:
    pack = torch.load(path, weights_only=True)
    split_ex = [
        [Example(i, f, int(s)) for i, f, s in zip(p["ids"], p["feats"], p["start"], strict=True)]
        for p in (pack["train"], pack["val"])
    ]
    return split_ex[0], split_ex[1]


def target_tag(target: PreTrainedModel) -> str:
    """A short fingerprint of the target: its config and the first rows of its output head."""
    digest = hashlib.sha1(target.config.to_json_string(use_diff=False).encode())
    digest.update(target.get_output_embeddings().weight[:8].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:8]


def cached_features(
    target: PreTrainedModel, records: list[dict[str, Any]], folder: Path, log: Any
) -> dict[tuple[int, ...], Example]:
    """Every record's target features by its token ids: read from this target's `features-<target>-*.pt` caches in
    `folder`, the missing ones computed in one pass and saved as a new cache file (so adding a data file costs only
    its own pass; another target, or other weights, never reads these)."""
    tag = target_tag(target)
    known: dict[tuple[int, ...], Example] = {}
    for path in sorted(folder.glob(f"features-{tag}-*.pt")):
        for part in load_examples(path):
            known.update((tuple(e.ids.tolist()), e) for e in part)
    distinct = {tuple(r["ids"]) for r in records}
    missing = list({tuple(r["ids"]): r for r in records if tuple(r["ids"]) not in known}.values())
    if missing:
        print(f"target features for {len(missing)} of {len(distinct)} distinct records (the rest cached)", file=log,
              flush=True)  # fmt: skip
        new = target_features(target, missing, 8192)
        digest = hashlib.sha1(repr([r["ids"] for r in missing]).encode()).hexdigest()[:10]
        save_examples(folder / f"features-{tag}-{len(missing)}-{digest}.pt", new, [])
        known.update((tuple(e.ids.tolist()), e) for e in new)
    return known


def coverage(examples: list[Example], head_ids: torch.Tensor) -> float:
    inside = set(head_ids.tolist())
    toks = [t for e in examples for t in e.ids[e.start + 1 :].tolist()]
    return sum(t in inside for t in toks) / max(1, len(toks))


def collate(rows: list[Example], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B, W], feats [B, W, H] float32, response mask [B, W] (positions whose next token is a response token)."""
    width = max(len(e.ids) for e in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    feats = torch.zeros(len(rows), width, rows[0].feats.shape[-1])
    resp = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, e in enumerate(rows):
        n = len(e.ids)
        ids[b, :n] = e.ids
        feats[b, :n] = e.feats.float()
        resp[b, e.start : n - 1] = True  # the last position has no next token in the data
    return ids.to(device), feats.to(device), resp.to(device)


# -- the unrolled objective ------------------------------------------------------------------------------------
def level_mask(width: int, level: int, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """Additive mask [W, (level + 1) W] for level `level` queries over keys of levels 0..level.

    A level-j entry at position s drafts as the j-th node of a chain whose root sits at s - j: it sees level-0 keys
    (real features) up to s - j and the level-i key at s - j + i for i = 1..j (its own drafted ancestors)."""
    s = torch.arange(width, device=device)[:, None]  # [W, 1]
    r = torch.arange(width, device=device)[None, :]  # [1, W]
    blocks = [r <= s - level] + [r == s - level + i for i in range(1, level + 1)]
    allowed = torch.cat(blocks, dim=1)  # [W, (level + 1) W]
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)


def unrolled(
    model: FeatureDraftModel,
    embed: torch.nn.Embedding,
    head: torch.Tensor,
    ids: torch.Tensor,
    feats: torch.Tensor,
    levels: int,
) -> list[torch.Tensor]:
    """Predicted features for each level: list of [B, W, H].  Level 0 gets the target's features as input."""
    bsz, width, hidden = feats.shape
    with torch.no_grad():
        tok = embed(ids)  # [B, W, H]
    positions = torch.arange(width, device=ids.device)[None].expand(bsz, -1)
    cache = DynamicCache(config=model.config)
    zero = feats.new_zeros(bsz, 1, hidden)
    inp = torch.cat([zero, feats[:, :-1]], dim=1)  # feature of the previous position
    outs = []
    kind = feats.device.type
    mask_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else feats.dtype
    for level in range(levels):
        mask = level_mask(width, level, mask_dtype, feats.device)[None, None].expand(bsz, 1, -1, -1)
        out = model(features=inp, token_embeds=tok, position_ids=positions, attention_mask=mask, past_key_values=cache)
        outs.append(out)
        inp = torch.cat([zero, out[:, :-1]], dim=1)
    return outs


def level_losses(
    outs: list[torch.Tensor], feats: torch.Tensor, resp: torch.Tensor, head: torch.Tensor, reg_weight: float
) -> tuple[list[torch.Tensor], list[float]]:
    """Per level: KL(p_target || q_draft) over the head + reg_weight * smooth-L1 to the target feature; and top-1
    agreement with the target's argmax over the head."""
    with torch.no_grad(), torch.autocast(feats.device.type, enabled=False):  # the target's side in float32
        p_log = F.log_softmax(feats @ head.T, dim=-1)  # [B, W, K]
        p_top = p_log.argmax(-1)
    losses, agree = [], []
    for level, out in enumerate(outs):
        m = resp.clone()
        m[:, :level] = False  # level j needs j predicted ancestors
        q_log = F.log_softmax((out @ head.T).float(), dim=-1)  # [B, W, K]; float32 under autocast too
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # [B, W]
        reg = F.smooth_l1_loss(out.float(), feats, reduction="none").mean(-1)  # [B, W]
        n = m.sum().clamp(min=1)
        losses.append(((kl + reg_weight * reg) * m).sum() / n)
        agree.append(float(((q_log.argmax(-1) == p_top) & m).sum() / n))
    return losses, agree


@torch.no_grad()
def evaluate(
    model: FeatureDraftModel,
    embed: torch.nn.Embedding,
    head: torch.Tensor,
    full_head: torch.Tensor,
    head_ids: torch.Tensor,
    examples: list[Example],
    cfg: TrainConfig,
) -> dict[str, float]:
    """Held-out top-1 agreement per level against the target's argmax over the FULL vocabulary."""
    model.eval()
    hits = [0] * cfg.levels
    total = [0] * cfg.levels
    for rows in batches(examples, cfg.batch_tokens, random.Random(0)):
        ids, feats, resp = collate(rows, head.device)
        with autocast(head.device, cfg):
            outs = unrolled(model, embed, head, ids, feats, cfg.levels)
        target_top = (feats @ full_head.T).argmax(-1)  # [B, W]
        for level, out in enumerate(outs):
            m = resp.clone()
            m[:, :level] = False
            draft_top = head_ids[(out.to(head.dtype) @ head.T).argmax(-1)]
            hits[level] += int(((draft_top == target_top) & m).sum())
            total[level] += int(m.sum())
    model.train()
    return {f"agree_l{i}": hits[i] / max(1, total[i]) for i in range(cfg.levels)}


# -- driver ----------------------------------------------------------------------------------------------------
def build_model(target: PreTrainedModel, cfg: TrainConfig, head_ids: torch.Tensor) -> FeatureDraftModel:
    model = FeatureDraftModel(draft_config(target.config, cfg.head_size, cfg.layers))
    model.head_ids.copy_(head_ids)
    if cfg.init == "last-layer":  # start from the target's last layer(s) and final norm
        layers = target.model.layers
        for i, layer in enumerate(model.decoder.layers):
            layer.load_state_dict(layers[len(layers) - cfg.layers + i].state_dict())
        model.decoder.norm.load_state_dict(target.model.norm.state_dict())
    return model


def train(
    target: PreTrainedModel, cfg: TrainConfig, log: Any, stops: list[int], tokenizer: Any | None = None
) -> dict[str, Any]:
    """Train (or resume) a feature draft for `target`; `stops` always get a row in the reduced head."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in cfg.data]
    if not paths[0].exists():
        if tokenizer is None:
            raise ValueError(f"{paths[0]} does not exist and no tokenizer was given to generate it")
        print(f"{paths[0]} does not exist: generating self-distillation data first", file=log)
        build_dataset(target, tokenizer, paths[0])
    records = [r for p in paths for r in read_dataset(p)]
    train_recs, val_recs = split(records, cfg.val_share, cfg.seed)
    known = cached_features(target, records, paths[0].parent, log)  # the target pass, cached for later runs
    train_ex = [known[tuple(r["ids"])] for r in train_recs]
    val_ex = [known[tuple(r["ids"])] for r in val_recs]
    val_ex = val_ex[: cfg.val_records] if cfg.val_records else val_ex
    start = FeatureDraftModel.from_pretrained(cfg.init_from, dtype=torch.float32) if cfg.init_from else None
    keep_head = start is not None and not cfg.head_from_data
    fill = start.head_ids.tolist() if start is not None else None
    head_ids = start.head_ids.clone() if keep_head else head_tokens(train_ex, cfg.head_size, stops, fill)
    if start is not None and not keep_head:  # the saved head's size may differ: the buffer takes the new one
        start.config.specvlm_head_size = len(head_ids)
        start.head_ids = head_ids.clone()
    n_train = sum(len(e.ids) - e.start - 1 for e in train_ex)
    stats = {
        "records": len(records),
        "train_response_tokens": n_train,
        "val_response_tokens": sum(len(e.ids) - e.start - 1 for e in val_ex),
        "head_coverage_val": coverage(val_ex, head_ids),
    }
    print(json.dumps(stats), file=log, flush=True)

    embed, full_head = target_head(target)
    full_head = full_head.detach()
    device = full_head.device
    head_ids = head_ids.to(device)
    head = full_head[head_ids]  # [K, H]
    model = (start if start is not None else build_model(target, cfg, head_ids)).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = random.Random(cfg.seed)
    per_epoch = len(batches(train_ex, cfg.batch_tokens, rng))
    total_steps = max(1, int(per_epoch * cfg.epochs))

    ckpt = out_dir / "checkpoint.pt"
    step = 0
    if ckpt.exists():  # resume
        state = torch.load(ckpt, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        print(f"resumed from {ckpt} at step {step}", file=log, flush=True)
    history = [{"step": step, **evaluate(model, embed, head, full_head, head_ids, val_ex, cfg)}]
    print(json.dumps(history[-1]), file=log, flush=True)
    t0 = time.time()
    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", dynamic_ncols=True)
    weights = [cfg.level_decay**i for i in range(cfg.levels)]
    while step < total_steps and not (cfg.minutes and time.time() - t0 > cfg.minutes * 60):
        for rows in batches(train_ex, cfg.batch_tokens, rng):
            ids, feats, resp = collate(rows, device)
            with autocast(device, cfg):
                outs = unrolled(model, embed, head, ids, feats, cfg.levels)
                losses, agree = level_losses(outs, feats, resp, head, cfg.reg_weight)
            loss = sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(weights)
            optimizer_step(opt, params, loss, lr_at(cfg, step, total_steps, time.time() - t0))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", a0=f"{agree[0]:.2f}", a1=f"{agree[-1]:.2f}")
            if step % cfg.eval_every == 0 or step >= total_steps:
                history.append({"step": step, "loss": loss.item(), **evaluate(model, embed, head, full_head,
                                                                               head_ids, val_ex, cfg)})  # fmt: skip
                print(json.dumps(history[-1]), file=log, flush=True)
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, ckpt)
            if step >= total_steps or (cfg.minutes and time.time() - t0 > cfg.minutes * 60):
                break
    bar.close()
    final = evaluate(model, embed, head, full_head, head_ids, val_ex, cfg)
    model.to("cpu", torch.bfloat16).save_pretrained(out_dir)  # bf16 on disk; loaded in the target's dtype
    report = {
        "command": " ".join([CLI, *sys.argv[1:]]),
        "config": asdict(cfg),
        "data": stats,
        "steps": step,
        "train_minutes": (time.time() - t0) / 60,
        "final": final,
        "history": history,
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    ckpt.unlink(missing_ok=True)
    return report
