"""Train the embedded miniature VLM pair on rendered scenes (training/scenes.py): `python -m training.mini_vlm`.

    python -m training.mini_vlm target --data runs/scenes --out drafters/weights/mini-llava --minutes 30
    python -m training.mini_vlm draft --data runs/scenes --out drafters/weights/mini-llava-draft --minutes 15

target: a llava around the frozen embedded SmolLM2-135M-Instruct. Stage 1 trains the new vision tower alone to name
  the scene's attributes (five small classifier heads on its mean patch feature, thrown away afterwards); stage 2
  trains vision tower and projector end to end by cross-entropy on the captions through the frozen language model
  (plus the attribute loss). Only the vision tower and projector are saved.
draft: a llava draft with its own vision tower (started from the target's), its own projector and one decoder
  layer; embeddings and head are SmolLM2's (shared, frozen). It learns the target's own greedy captions of the
  training images (self-distillation), made once with batched HF generation and cached next to --out's data.
Both print held-out numbers at the end and write training.json (command, history) next to the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm
from transformers import LlamaConfig, LlavaForConditionalGeneration

from specvlm import mini_vlm
from specvlm.embedded import load_embedded
from specvlm.options import LoadOptions
from specvlm.vlm import expand_placeholders, render_prompt
from training.scenes import ATTRIBUTES, COLOURS, COUNTS, PLACES, SHAPES, SIZES, Scene, attribute_hits

PROMPT = "Describe the image in one sentence."
CLASSES: dict[str, list[Any]] = {
    "count": list(COUNTS),
    "size": list(SIZES),
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "place": list(PLACES),
}


@dataclass
class Split:
    ids: list[int]
    pixels: torch.Tensor  # [N, 3, S, S]
    captions: list[list[str]]
    scenes: list[Scene]
    labels: torch.Tensor  # [N, 5] attribute class indices


def read_split(folder: Path, processor: Any, limit: int | None = None) -> Split:
    """A split written by training.scenes, read with pycocotools; pixels through the llava processor's image part."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(sys.stderr):
        coco = COCO(str(folder / "captions.json"))
    ids = sorted(coco.getImgIds())[:limit]
    images = [Image.open(folder / "images" / coco.imgs[i]["file_name"]).convert("RGB") for i in ids]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    scenes = [Scene(**coco.imgs[i]["scene"]) for i in ids]
    labels = torch.tensor([[CLASSES[a].index(getattr(s, a)) for a in ATTRIBUTES] for s in scenes])
    caps = [[a["caption"] for a in coco.imgToAnns[i]] for i in ids]
    return Split(ids, pixels, caps, scenes, labels)


def prompt_ids(processor: Any, tokenizer: Any, prompt: str = PROMPT) -> list[int]:
    """The target's prompt ids exactly as specvlm builds them at inference (chat template, 16 image tokens)."""
    text, templated = render_prompt(processor, tokenizer, prompt, 1, mini_vlm.IMAGE_TOKEN)
    expanded = expand_placeholders(text, mini_vlm.IMAGE_TOKEN, [mini_vlm.IMAGE_TOKENS])
    return [int(i) for i in tokenizer(expanded, add_special_tokens=not templated)["input_ids"]]


def image_embeds(vlm: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """What llava puts at the image tokens (vision_feature_layer -1, CLS dropped): [B, 16, H]."""
    feats = vlm.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]  # [B, 16, Dv]
    return vlm.model.multi_modal_projector(feats)


def patch_features(vlm: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    return vlm.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]  # [B, 16, Dv]


class AttributeHeads(nn.Module):
    """Five linear classifiers on the mean patch feature (training aid only, not saved)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(width, len(CLASSES[a])) for a in ATTRIBUTES)

    def loss(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = feats.mean(1)  # [B, Dv]
        losses, right = [], []
        for k, head in enumerate(self.heads):
            logits = head(pooled)  # [B, C_k]
            losses.append(F.cross_entropy(logits, labels[:, k]))
            right.append((logits.argmax(-1) == labels[:, k]).float().mean())
        return torch.stack(losses).mean(), torch.stack(right)  # [], [5]


def caption_batch(
    prefix: list[int], targets: list[list[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L], labels [B, L] with -100 outside the caption), right-padded."""
    length = len(prefix) + max(len(t) for t in targets)
    ids = torch.full((len(targets), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for b, tgt in enumerate(targets):
        n = len(prefix) + len(tgt)
        ids[b, :n] = torch.tensor(prefix + tgt)
        mask[b, :n] = 1
        labels[b, len(prefix) - 1 : n - 1] = torch.tensor(tgt)  # position s predicts token s + 1
    return ids, mask, labels


def caption_loss(
    vlm: LlavaForConditionalGeneration,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    image_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the caption tokens (head only where labelled) and top-1 accuracy."""
    embeds = vlm.model.language_model.embed_tokens(ids)  # [B, L, H]
    img = image_embeds(vlm, pixels).to(embeds.dtype)  # [B, 16, H]
    embeds = embeds.clone()
    embeds[:, image_pos] = img
    hidden = vlm.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # [B, L, H]
    keep = labels != -100
    logits = vlm.lm_head(hidden[keep])  # [T, V]
    gold = labels[keep]
    return F.cross_entropy(logits, gold), (logits.argmax(-1) == gold).float().mean()


def cosine_lr(step: int, total: int, warmup: int, time_done: float = 0.0) -> float:
    """Linear warmup, then cosine to 0 by `total` steps or by the end of the time budget, whichever comes first."""
    if step < warmup:
        return (step + 1) / warmup
    done = max((step - warmup) / max(1, total - warmup), time_done)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


@torch.inference_mode()
def greedy_captions(
    vlm: LlavaForConditionalGeneration, prefix: list[int], pixels: torch.Tensor, eos: int, n: int, batch: int = 64
) -> list[list[int]]:
    """Greedy captions for many images at once: every prompt has the same length, so no padding is needed."""
    out: list[list[int]] = []
    for i in tqdm(range(0, len(pixels), batch), desc="greedy captions", unit="batch", leave=False):
        pv = pixels[i : i + batch]
        ids = torch.tensor([prefix] * len(pv))
        gen = vlm.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pv,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=eos,
        )
        for row in gen[:, len(prefix) :].tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def attribute_accuracy(texts: list[str], scenes: list[Scene]) -> dict[str, float]:
    hits = [attribute_hits(t, s) for t, s in zip(texts, scenes, strict=True)]
    acc = {a: sum(h[a] for h in hits) / len(hits) for a in ATTRIBUTES}
    acc["all five"] = sum(all(h.values()) for h in hits) / len(hits)
    return acc


def seconds_left(start: float, minutes: float) -> float:
    return minutes * 60 - (time.time() - start)


def time_done(start: float, minutes: float) -> float:
    return (time.time() - start) / (minutes * 60)


# -- the target ----------------------------------------------------------------------------------------------------
def train_target(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    lm, tok = load_embedded(LoadOptions(dtype=torch.float32, device=torch.device("cpu")))
    processor = mini_vlm.build_processor(tok)
    vlm = mini_vlm.new_vlm(lm)
    del lm
    for p in vlm.model.language_model.parameters():
        p.requires_grad_(False)
    train = read_split(Path(args.data) / "train", processor)
    val = read_split(Path(args.data) / "val", processor, limit=args.val_images)
    prefix = prompt_ids(processor, tok)
    image_pos = torch.tensor([i for i, t in enumerate(prefix) if t == vlm.config.image_token_id])
    eos = int(tok.convert_tokens_to_ids("<|im_end|>"))
    heads = AttributeHeads(vlm.config.vision_config.hidden_size)
    history: list[dict[str, Any]] = []
    start = time.time()

    # stage 1: the vision tower learns the attributes (cheap: no language model)
    tower = list(vlm.model.vision_tower.parameters())
    opt = torch.optim.AdamW([*tower, *heads.parameters()], lr=args.lr_vision_stage1, weight_decay=0.01)
    vlm.train()
    bar = tqdm(range(args.stage1_steps), desc="stage 1 (attributes)", unit="step")
    for step in bar:
        idx = torch.randint(len(train.ids), (args.stage1_batch,))
        loss, right = heads.loss(patch_features(vlm, train.pixels[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{right.mean().item():.3f}")
    with torch.no_grad():
        vlm.eval()
        _, right = heads.loss(patch_features(vlm, val.pixels), val.labels)
    stage1 = dict(zip(ATTRIBUTES, (round(float(r), 4) for r in right), strict=True))
    print(f"stage 1: held-out attribute accuracy from the vision tower alone: {stage1}", file=sys.stderr)
    history.append({"stage": 1, "steps": args.stage1_steps, "val_attribute_accuracy": stage1})

    # stage 2: captions through the frozen language model
    opt = torch.optim.AdamW(
        [
            {"params": tower, "lr": args.lr_vision},
            {"params": list(vlm.model.multi_modal_projector.parameters()), "lr": args.lr},
            {"params": list(heads.parameters()), "lr": args.lr_vision},
        ],
        weight_decay=0.01,
    )
    base = [g["lr"] for g in opt.param_groups]
    total = args.steps
    step = 0
    bar = tqdm(total=total, desc="stage 2 (captions)", unit="step")
    while step < total and seconds_left(start, args.minutes) > 0:
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * cosine_lr(step, total, args.warmup, time_done(start, args.minutes))
        idx = rng.sample(range(len(train.ids)), args.batch)
        targets = [tok(rng.choice(train.captions[i]), add_special_tokens=False)["input_ids"] + [eos] for i in idx]
        ids, mask, labels = caption_batch(prefix, targets, eos)
        vlm.train()
        pixels = train.pixels[idx]
        loss, acc = caption_loss(vlm, pixels, ids, mask, labels, image_pos)
        aux, _ = heads.loss(patch_features(vlm, pixels), train.labels[idx])
        opt.zero_grad()
        (loss + args.aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.3f}")
        if step % args.eval_every == 0 or step == total:
            minutes = round((time.time() - start) / 60, 2)
            history.append({"stage": 2, "step": step, "minutes": minutes, "loss": loss.item(), "acc": acc.item()})
    bar.close()
    vlm.eval()
    texts = [tok.decode(c, skip_special_tokens=True) for c in greedy_captions(vlm, prefix, val.pixels, eos, 24)]
    acc = attribute_accuracy(texts, val.scenes)
    print(f"stage 2: {step} steps; held-out attribute accuracy of greedy captions: {acc}", file=sys.stderr)
    for text in texts[:5]:
        print(f"  {text}", file=sys.stderr)
    mini_vlm.save_trained(
        vlm,
        Path(args.out),
        mini_vlm.TARGET_SHARED,
        {"training": {"command": " ".join(sys.argv), "steps": step, "history": history, "val_accuracy": acc}},
    )
    return {"steps": step, "val_attribute_accuracy": acc, "examples": texts[:5]}


# -- the draft -----------------------------------------------------------------------------------------------------
def draft_text_config(target_text: Any, layers: int) -> LlamaConfig:
    """The draft's language model: the target's width (so embeddings and head are shared), `layers` layers."""
    cfg = LlamaConfig.from_dict(target_text.to_dict())
    cfg.num_hidden_layers = layers
    cfg.tie_word_embeddings = True
    return cfg


def train_draft(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    lm, tok = load_embedded(LoadOptions(dtype=torch.float32, device=torch.device("cpu")))
    processor = mini_vlm.build_processor(tok)
    target = mini_vlm.assemble(Path(args.target_weights), lm)
    draft = mini_vlm.new_vlm(lm, draft_text_config(target.config.text_config, args.layers))
    draft.model.vision_tower.load_state_dict(target.model.vision_tower.state_dict())
    last = lm.model.layers[-1].state_dict()  # start the draft layer from the target's last layer
    draft.model.language_model.layers[0].load_state_dict(last)
    del lm
    train = read_split(Path(args.data) / "train", processor, limit=args.train_images)
    val = read_split(Path(args.data) / "val", processor, limit=args.val_images)
    prefix = prompt_ids(processor, tok)
    image_pos = torch.tensor([i for i, t in enumerate(prefix) if t == target.config.image_token_id])
    eos = int(tok.convert_tokens_to_ids("<|im_end|>"))
    cache = Path(args.data) / f"target-captions-{mini_vlm.fingerprint(Path(args.target_weights))}.json"
    made = json.loads(cache.read_text()) if cache.is_file() else {"train": [], "val": []}
    if len(made["train"]) < len(train.ids) or len(made["val"]) < len(val.ids):  # first run, or more images asked
        made = {
            "train": greedy_captions(target, prefix, train.pixels, eos, 24),
            "val": greedy_captions(target, prefix, val.pixels, eos, 24),
        }
        cache.write_text(json.dumps(made))
    train_targets, val_targets = made["train"][: len(train.ids)], made["val"][: len(val.ids)]
    shared = set(mini_vlm.DRAFT_SHARED)
    params = [p for n, p in draft.named_parameters() if not any(n.startswith(s) for s in shared)]
    draft.model.language_model.embed_tokens.weight.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    start, step, total = time.time(), 0, args.steps
    history: list[dict[str, Any]] = []

    def evaluate() -> float:
        draft.eval()
        with torch.no_grad():
            accs = []
            for i in range(0, len(val.ids), args.batch):
                rows = list(range(i, min(i + args.batch, len(val.ids))))
                ids, mask, labels = caption_batch(prefix, [val_targets[r] for r in rows], eos)
                accs.append(caption_loss(draft, val.pixels[rows], ids, mask, labels, image_pos)[1].item())
        draft.train()
        return sum(accs) / len(accs)

    before = evaluate()
    print(f"draft: held-out top-1 agreement with the target's greedy captions before training: {before:.3f}")
    bar = tqdm(total=total, desc="draft", unit="step")
    draft.train()
    while step < total and seconds_left(start, args.minutes) > 0:
        for g in opt.param_groups:
            g["lr"] = args.lr * cosine_lr(step, total, args.warmup, time_done(start, args.minutes))
        rows = rng.sample(range(len(train.ids)), args.batch)
        ids, mask, labels = caption_batch(prefix, [train_targets[r] for r in rows], eos)
        loss, acc = caption_loss(draft, train.pixels[rows], ids, mask, labels, image_pos)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.3f}")
        if step % args.eval_every == 0:
            history.append({"step": step, "loss": loss.item(), "val_agreement": round(evaluate(), 4)})
    bar.close()
    after = evaluate()
    print(f"draft: held-out top-1 agreement after {step} steps: {after:.3f}")
    meta = {"command": " ".join(sys.argv), "steps": step, "history": history, "agreement": [before, after]}
    # the draft proposes only tokens the target used in its training captions: its head shrinks from 49k rows to
    # these (the target still verifies over the whole vocabulary)
    head_ids = sorted({t for caption in train_targets for t in caption} | {eos})
    print(f"draft: reduced head of {len(head_ids)} token ids (every token of the target's training captions)")
    extra = {"training": meta, "head_ids": head_ids, "default_tree": {"name": "chain", "depth": args.chain_depth}}
    mini_vlm.save_trained(draft.eval(), Path(args.out), mini_vlm.DRAFT_SHARED, extra)
    return {"steps": step, "agreement_before": before, "agreement_after": after}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.mini_vlm",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("part", choices=["target", "draft"], help="what to train")
    parser.add_argument("--data", required=True, help="folder written by `python -m training.scenes`")
    parser.add_argument("--out", required=True, help="folder for the trained weights")
    parser.add_argument("--target-weights", default=str(mini_vlm.TARGET_WEIGHTS), help="draft: the target's weights")
    parser.add_argument("--minutes", type=float, default=30.0, help="stop after this long (wall clock)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (cosine schedule length)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="projector (target) / all draft weights")
    parser.add_argument("--lr-vision", type=float, default=3e-4, help="target stage 2: vision tower")
    parser.add_argument("--lr-vision-stage1", type=float, default=2e-3)
    parser.add_argument("--stage1-steps", type=int, default=800)
    parser.add_argument("--stage1-batch", type=int, default=64)
    parser.add_argument("--aux-weight", type=float, default=0.2, help="attribute loss weight in stage 2")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--layers", type=int, default=1, help="draft decoder layers")
    parser.add_argument(
        "--chain-depth",
        type=int,
        default=12,
        help="draft: its default tree, a chain this deep (12: best tokens/s of chains 6-14 and static/dynamic trees "
        "on the 2-core CPU, python -m eval.coco_caption --limit 20 --depth N)",
    )
    parser.add_argument("--train-images", type=int, default=None, help="draft: distil on this many images")
    parser.add_argument("--val-images", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_target(args) if args.part == "target" else train_draft(args)
    print(json.dumps({"part": args.part, **result}, default=str))


if __name__ == "__main__":
    main()
