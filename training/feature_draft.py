"""`python -m drafters.train`: distil a feature draft (drafters/feature_draft.py) from its target.

Data is the target's own greedy text (drafters/selfdistill.py; generated first when `--data` does not exist).
Steps: target features for every sequence (one teacher-forced pass, cached) -> reduced head = the most frequent
response tokens -> training with KL to the target's distribution (over the head) plus a feature regression,
unrolled for `--levels` drafting steps (level j sees its own predictions from level j - 1, as when it drafts a
chain) -> held-out top-1 agreement per level -> an HF-format folder that `specvlm.load(draft=PATH)` loads.

With `--exits 16,24,28` it trains the exits of layer-skip drafts instead (drafters/train_exits.py), used as
`draft="layerskip:K:OUT"`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel

from drafters.feature_draft import FeatureDraftModel, draft_config, target_head
from drafters.selfdistill import build_dataset, read_dataset, stop_ids

CLI = "python -m drafters.train"


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
    eval_every: int = 200
    seed: int = 0
    threads: int = 0
    target: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    autocast: str = "off"  # "bf16": the training forward and backward under bfloat16 autocast (weights stay float32)
    device: str | None = None  # None: cuda when available, else cpu (the target, the draft and every batch)
    exits: str = ""  # "16,24,28": train layer-skip exits (drafters/train_exits.py) instead of a feature draft
    val_records: int = 0  # > 0: score held-out agreement on this many held-out records only


# -- data ------------------------------------------------------------------------------------------------------
def split(records: list[dict[str, Any]], val_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A random held-out share of the records (all of it text the target wrote; never the evaluation prompts)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(records) * val_share))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


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
    missing = list({tuple(r["ids"]): r for r in records if tuple(r["ids"]) not in known}.values())
    if missing:
        print(f"target features for {len(missing)} of {len(records)} records (the rest cached)", file=log, flush=True)
        new = target_features(target, missing, 8192)
        digest = hashlib.sha1(repr([r["ids"] for r in missing]).encode()).hexdigest()[:10]
        save_examples(folder / f"features-{tag}-{len(missing)}-{digest}.pt", new, [])
        known.update((tuple(e.ids.tolist()), e) for e in new)
    return known


def head_tokens(examples: list[Example], size: int, always: list[int]) -> torch.Tensor:
    """The `size` most frequent response tokens (plus the stop tokens): the draft's reduced output vocabulary."""
    counts: Counter[int] = Counter()
    for e in examples:
        counts.update(e.ids[e.start + 1 :].tolist())
    chosen = list(dict.fromkeys([*always, *(t for t, _ in counts.most_common(size))]))[:size]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def coverage(examples: list[Example], head_ids: torch.Tensor) -> float:
    inside = set(head_ids.tolist())
    toks = [t for e in examples for t in e.ids[e.start + 1 :].tolist()]
    return sum(t in inside for t in toks) / max(1, len(toks))


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
    head_ids = start.head_ids.clone() if start is not None else head_tokens(train_ex, cfg.head_size, stops)
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


def parse_args(argv: list[str] | None) -> TrainConfig:
    d = TrainConfig(data=[], out="")
    ap = argparse.ArgumentParser(prog=CLI, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        nargs="+",
        default=["runs/distill/data.jsonl"],
        help="self-distillation JSONL file(s) (the first is made with drafters.selfdistill if missing)",
    )
    ap.add_argument("--out", default="runs/draft", help="output folder (HF format); resumes from its checkpoint")
    ap.add_argument("--head-size", type=int, default=d.head_size, help="reduced output vocabulary of the draft")
    ap.add_argument("--layers", type=int, default=d.layers, help="decoder layers of the draft")
    ap.add_argument("--levels", type=int, default=d.levels, help="unrolled drafting steps trained")
    ap.add_argument("--level-decay", type=float, default=d.level_decay, help="loss weight ratio of level j+1 to j")
    ap.add_argument("--reg-weight", type=float, default=d.reg_weight, help="weight of the feature regression")
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="padded tokens per batch")
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--minutes", type=float, default=d.minutes, help="wall-clock budget (0 = none)")
    ap.add_argument("--val-share", type=float, default=d.val_share)
    ap.add_argument("--init", choices=["last-layer", "random"], default=d.init)
    ap.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue from a saved feature draft (e.g. drafters/weights/smollm2-135m-feature): its weights and "
        "its reduced head (--head-size is then ignored)",
    )
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--threads", type=int, default=d.threads, help="torch threads (0 = default)")
    ap.add_argument("--target", default=None, help="target (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument(
        "--exits",
        default="",
        metavar="K1,K2",
        help="train the exits of layer-skip drafts with these layer counts (e.g. 16,24,28; SD2-style, all "
        "at once, the target frozen) instead of a feature draft; use them as draft='layerskip:K:OUT'",
    )
    ap.add_argument("--val-records", type=int, default=0, help="score agreement on this many held-out records (0: all)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    ap.add_argument("--autocast", choices=["off", "bf16"], default=d.autocast,
                    help="bf16: train under bfloat16 autocast, faster on GPUs and on CPUs with AVX512-BF16/AMX "
                    "(1.5x per step on this project's CPU; the weights, the optimizer and the saved draft are "
                    "unchanged)")  # fmt: skip
    return TrainConfig(**vars(ap.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from specvlm.models import LoadOptions, load_embedded, load_model, resolve_device

    opts = LoadOptions(dtype=torch.float32, device=resolve_device(cfg.device))
    if cfg.target is None:
        target, tokenizer = load_embedded(opts)
    else:
        loaded = load_model(cfg.target, opts)
        target, tokenizer = loaded.model, loaded.tokenizer
    target.eval().requires_grad_(False)
    if cfg.exits:
        from drafters.train_exits import parse_exits, train_exits

        try:  # a bad --exits: one line, not a traceback
            parse_exits(cfg.exits, int(target.config.get_text_config().num_hidden_layers))
        except ValueError as err:
            raise SystemExit(f"{CLI}: error: {err}") from None
        report = train_exits(target, cfg, sys.stdout, stop_ids(tokenizer))
        print(json.dumps({"before": report["before"], "final": report["final"], "steps": report["steps"]}))
        return
    report = train(target, cfg, sys.stdout, stop_ids(tokenizer), tokenizer)
    print(json.dumps({"final": report["final"], "data": report["data"], "steps": report["steps"]}))


if __name__ == "__main__":
    main()
