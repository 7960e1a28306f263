"""Published drafts (EAGLE-3 official and speculators layouts, EAGLE-1/2, Medusa-1): tiny checkpoints written as their
publishers write them, read through `specvlm.load(draft=folder)`, checked against reference forwards written here
from the formats' descriptions, and decoded losslessly on text and VLM targets."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import hf_greedy, random_prompts, tiny_llama
from families import build
from safetensors.torch import load_file, save_file
from torch import nn

import specvlm
from drafters.eagle import EagleDrafter
from drafters.medusa import MedusaDrafter
from specvlm.builders import BranchingTree, ChainTree, DynamicTree, OptTree
from specvlm.drafting import DraftContext
from specvlm.growmap import load_growmap

VOCAB = 96
LAYERS = 6  # EAGLE-3's default aux layers (2, L // 2, L - 3) = (2, 3, 3)
TREES = [
    ChainTree(depth=4, hardware_aware=False),
    BranchingTree([2, 2, 1]),
    DynamicTree(budget=10, topk=3, depth=5, hardware_aware=False),
    OptTree(nodes=10, threshold=0.1, max_depth=5, hardware_aware=False),
]


# -- writers: the files as the publishers' code saves them ---------------------------------------------------------
def _randn(g: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


def eagle3_tensors(prefix: str, hidden: int, target_hidden: int, heads: int, kv: int, inter: int, vocab_d: int,
                   vocab: int, seed: int) -> dict[str, torch.Tensor]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    d = hidden // heads
    w = {
        "fc.weight": _randn(g, hidden, 3 * target_hidden),
        f"{prefix}self_attn.q_proj.weight": _randn(g, heads * d, 2 * hidden),
        f"{prefix}self_attn.k_proj.weight": _randn(g, kv * d, 2 * hidden),
        f"{prefix}self_attn.v_proj.weight": _randn(g, kv * d, 2 * hidden),
        f"{prefix}self_attn.o_proj.weight": _randn(g, hidden, heads * d),
        f"{prefix}mlp.gate_proj.weight": _randn(g, inter, hidden),
        f"{prefix}mlp.up_proj.weight": _randn(g, inter, hidden),
        f"{prefix}mlp.down_proj.weight": _randn(g, hidden, inter),
        f"{prefix}input_layernorm.weight": 1 + _randn(g, hidden, scale=0.1),
        f"{prefix}hidden_norm.weight": 1 + _randn(g, hidden, scale=0.1),
        f"{prefix}post_attention_layernorm.weight": 1 + _randn(g, hidden, scale=0.1),
        "norm.weight": 1 + _randn(g, hidden, scale=0.1),
        "lm_head.weight": _randn(g, vocab_d, hidden, scale=1.0),
    }
    chosen = torch.sort(torch.randperm(vocab, generator=g)[:vocab_d]).values  # [Vd] target ids the draft covers
    w["d2t"] = (chosen - torch.arange(vocab_d)).long()  # offsets: target id = draft id + d2t[draft id]
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[chosen] = True
    w["t2d"] = t2d
    return w


def llama_layer_config(hidden: int, heads: int, kv: int, inter: int, vocab: int) -> dict:
    return {
        "hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inter,
        "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "vocab_size": vocab, "hidden_act": "silu",
        "model_type": "llama", "head_dim": 999,  # EAGLE computes hidden / heads, whatever the config says
    }  # fmt: skip


def write_eagle3(folder: Path, target: nn.Module, *, fmt: str = "safetensors", dtype: torch.dtype = torch.bfloat16,
                 vocab_d: int = 40, seed: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    """EAGLE-3's own layout: LlamaForCausalLMEagle3 config, `midlayer.*`, no embed_tokens, d2t/t2d."""
    text = target.config.get_text_config()
    h, vocab = text.hidden_size, int(target.get_output_embeddings().weight.shape[0])
    w = eagle3_tensors("midlayer.", h, h, 4, 2, 96, vocab_d, vocab, seed)
    w = {k: v.to(dtype) if v.is_floating_point() else v for k, v in w.items()}
    folder.mkdir(parents=True)
    cfg = {
        **llama_layer_config(h, 4, 2, 96, vocab),
        "architectures": ["LlamaForCausalLMEagle3"],
        "draft_vocab_size": vocab_d,
        "target_hidden_size": h,
        "num_hidden_layers": 1,
        "torch_dtype": "bfloat16",
    }  # fmt: skip  (no rope_theta: 10000)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(w, str(folder / "model.safetensors"))
    else:
        torch.save(w, folder / "pytorch_model.bin")
    return {k: v.float() if v.is_floating_point() else v for k, v in w.items()}


def write_speculators(folder: Path, target: nn.Module, aux: list[int], seed: int = 2) -> dict[str, torch.Tensor]:
    """vLLM speculators' eagle3 layout: `layers.0.*`, nested transformer_layer_config, norm_before_residual."""
    text = target.config.get_text_config()
    h, vocab = text.hidden_size, int(target.get_output_embeddings().weight.shape[0])
    w = eagle3_tensors("layers.0.", h, h, 4, 4, 80, 48, vocab, seed)
    folder.mkdir(parents=True)
    cfg = {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "speculators_version": "0.1.0",
        "transformer_layer_config": {**llama_layer_config(h, 4, 4, 80, vocab), "rope_theta": 5000.0},
        "draft_vocab_size": 48, "norm_before_residual": True, "target_hidden_size": h,
        "eagle_aux_hidden_state_layer_ids": aux,
        "speculators_config": {"algorithm": "eagle3", "proposal_methods": [], "verifier": {"name_or_path": "t"}},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(w, str(folder / "model.safetensors"))
    return w


def write_eagle1(folder: Path, target: nn.Module, seed: int = 3) -> dict[str, torch.Tensor]:
    """EAGLE-1/2 (yuhuili/EAGLE-*): plain Llama config, embed_tokens, fc with bias, `layers.0.*` without an input
    norm, no final norm, no lm_head; a pickled pytorch_model.bin."""
    text = target.config.get_text_config()
    h, vocab = text.hidden_size, int(target.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(seed)
    d = h // 4
    w = {
        "embed_tokens.weight": target.get_input_embeddings().weight.detach().clone(),
        "fc.weight": _randn(g, h, 2 * h), "fc.bias": _randn(g, h),
        **{f"layers.0.self_attn.{n}_proj.weight": _randn(g, 4 * d, h) for n in "qkv"},
        "layers.0.self_attn.o_proj.weight": _randn(g, h, 4 * d),
        "layers.0.mlp.gate_proj.weight": _randn(g, 64, h), "layers.0.mlp.up_proj.weight": _randn(g, 64, h),
        "layers.0.mlp.down_proj.weight": _randn(g, h, 64),
        "layers.0.post_attention_layernorm.weight": 1 + _randn(g, h, scale=0.1),
    }  # fmt: skip
    folder.mkdir(parents=True)
    cfg = {**llama_layer_config(h, 4, 4, 64, vocab), "architectures": ["LlamaForCausalLM"], "bias": True}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(w, folder / "pytorch_model.bin")
    return w


class ResBlock(nn.Module):  # Medusa-1's block, as its repository defines it
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


def write_medusa(folder: Path, target: nn.Module, heads: int = 3, layers: int = 1) -> nn.ModuleList:
    """Medusa-1: medusa_lm_head.pt = torch.save(medusa_head.state_dict()), config medusa_num_heads/_layers."""
    text = target.config.get_text_config()
    h, vocab = text.hidden_size, int(target.get_output_embeddings().weight.shape[0])
    torch.manual_seed(4)
    medusa = nn.ModuleList(
        [nn.Sequential(*([ResBlock(h)] * layers), nn.Linear(h, vocab, bias=False)) for _ in range(heads)]
    )
    for p in medusa.parameters():
        nn.init.normal_(p, std=0.3)
    folder.mkdir(parents=True)
    cfg = {"medusa_num_heads": heads, "medusa_num_layers": layers, "base_model_name_or_path": "tiny"}
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save(medusa.state_dict(), folder / "medusa_lm_head.pt")
    return medusa.eval()


# -- reference forwards, from the format descriptions --------------------------------------------------------------
def rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [heads, L, D] rotated at positions 0..L-1 (rotate-half convention)."""
    d, n = x.shape[-1], x.shape[-2]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(n).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(x: torch.Tensor, w: dict, p: str, heads: int, kv: int, head_dim: int, theta: float) -> torch.Tensor:
    n = x.shape[0]
    q = (x @ w[f"{p}self_attn.q_proj.weight"].T).view(n, heads, head_dim).transpose(0, 1)
    k = (x @ w[f"{p}self_attn.k_proj.weight"].T).view(n, kv, head_dim).transpose(0, 1)
    v = (x @ w[f"{p}self_attn.v_proj.weight"].T).view(n, kv, head_dim).transpose(0, 1)
    q, k = rope(q, theta), rope(k, theta)
    k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
    scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + torch.full((n, n), -math.inf).triu(1)
    out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, heads * head_dim)
    return out @ w[f"{p}self_attn.o_proj.weight"].T


def mlp(x: torch.Tensor, w: dict, p: str) -> torch.Tensor:
    gate, up = x @ w[f"{p}mlp.gate_proj.weight"].T, x @ w[f"{p}mlp.up_proj.weight"].T
    return (F.silu(gate) * up) @ w[f"{p}mlp.down_proj.weight"].T


def eagle3_reference(w: dict, p: str, feats: list[tuple[torch.Tensor, bool]], embeds: torch.Tensor, heads: int,
                     kv: int, theta: float, before: bool, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The draft over a causal sequence: feats[i] = (aux [3 H_t] when real, else a predicted h' [H]), embeds [L, H];
    returns h' [L, H] and logits over the target vocabulary [L, V]."""
    g = torch.stack([f @ w["fc.weight"].T if real else f for f, real in feats])  # [L, H]
    hidden = g.shape[-1]
    normed = rms(g, w[f"{p}hidden_norm.weight"])
    x = torch.cat([rms(embeds, w[f"{p}input_layernorm.weight"]), normed], -1)  # [L, 2H]
    residual = normed if before else g  # before: norm_before_residual
    h = residual + attention(x, w, p, heads, kv, hidden // heads, theta)
    h = h + mlp(rms(h, w[f"{p}post_attention_layernorm.weight"]), w, p)
    small = rms(h, w["norm.weight"]) @ w["lm_head.weight"].T  # [L, Vd]
    full = torch.full((h.shape[0], vocab), -math.inf)
    full[:, torch.arange(small.shape[1]) + w["d2t"]] = small
    return h, full


def eagle1_reference(w: dict, feats: torch.Tensor, embeds: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    x = torch.cat([embeds, feats], -1) @ w["fc.weight"].T + w["fc.bias"]  # [L, H]
    h = x + attention(x, w, "layers.0.", 4, 4, x.shape[-1] // 4, 10000.0)
    h = h + mlp(rms(h, w["layers.0.post_attention_layernorm.weight"]), w, "layers.0.")
    return h, h @ head.T


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to 1e-5 of the logits' scale (float32 sums of a few hundred products); -inf where the reference has it."""
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    live = torch.isfinite(want)
    scale = float(want[live].abs().max().clamp(min=1.0))
    torch.testing.assert_close(got[live], want[live], atol=1e-5 * scale, rtol=0)


def hidden_states(target: nn.Module, ids: list[int]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(s[0] for s in target(torch.tensor([ids]), output_hidden_states=True).hidden_states)


# -- reading: our logits equal the reference ------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_eagle3_official_logits_match_the_reference(tmp_path: Path, fmt: str) -> None:
    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    w = write_eagle3(tmp_path / "e3", target, fmt=fmt, dtype=torch.float32)
    dec = specvlm.load(target, draft=str(tmp_path / "e3"))
    drafter = dec.drafter
    assert isinstance(drafter, EagleDrafter) and drafter.layout == "eagle3" and drafter.target_layers == (2, 3, 3)
    ids = random_prompts(1, seed=5, vocab=VOCAB, low=10, high=11)[0]
    states = hidden_states(target, ids)
    aux = torch.cat([states[2], states[3], states[3]], -1)  # [L, 3H]
    emb = target.get_input_embeddings().weight.detach()
    session = drafter.session(DraftContext(tuple(ids), VOCAB, target_hidden=aux[:-1]))
    got_root = session.logits([0], [ids[-1]], [-1])[0]
    feats = [(aux[t], True) for t in range(len(ids) - 1)]  # position t: aux of t, embedding of token t + 1
    h, want = eagle3_reference(w, "midlayer.", feats, emb[ids[1:]], 4, 2, 10000.0, False, VOCAB)
    close(got_root, want[-1])
    child = int(want[-1].argmax())
    got_child = session.logits([1], [ids[-1], child], [-1, 0])[0]  # fed with the root's predicted h'
    _, want2 = eagle3_reference(
        w, "midlayer.", [*feats, (h[-1], False)], emb[[*ids[1:], child]], 4, 2, 10000.0, False, VOCAB
    )
    close(got_child, want2[-1])
    assert torch.isinf(got_root).sum() == VOCAB - 40  # tokens outside the draft vocabulary are never proposed


def test_speculators_eagle3_reads_its_layer_ids_and_norm_before_residual(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    w = write_speculators(tmp_path / "sp", target, aux=[1, 4, 5])
    drafter = specvlm.load(target, draft=f"eagle3:{tmp_path / 'sp'}").drafter
    assert isinstance(drafter, EagleDrafter) and drafter.target_layers == (1, 4, 5)
    ids = random_prompts(1, seed=6, vocab=VOCAB, low=9, high=10)[0]
    states = hidden_states(target, ids)
    aux = torch.cat([states[1], states[4], states[5]], -1)  # vLLM's ids: the input of decoder layer i
    emb = target.get_input_embeddings().weight.detach()
    got = drafter.session(DraftContext(tuple(ids), VOCAB, target_hidden=aux[:-1])).logits([0], [ids[-1]], [-1])[0]
    feats = [(aux[t], True) for t in range(len(ids) - 1)]
    _, want = eagle3_reference(w, "layers.0.", feats, emb[ids[1:]], 4, 4, 5000.0, True, VOCAB)
    close(got, want[-1])


def test_eagle1_logits_match_the_reference(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=2, vocab=VOCAB)
    w = write_eagle1(tmp_path / "e1", target)
    drafter = specvlm.load(target, draft=str(tmp_path / "e1")).drafter
    assert isinstance(drafter, EagleDrafter) and drafter.layout == "eagle" and drafter.target_layers == (-1,)
    ids = random_prompts(1, seed=7, vocab=VOCAB, low=8, high=9)[0]
    last = hidden_states(target, ids)[-1]  # [L, H] final-normed
    head = target.get_output_embeddings().weight.detach()
    session = drafter.session(DraftContext(tuple(ids), VOCAB, target_hidden=last[:-1]))
    got = session.logits([0], [ids[-1]], [-1])[0]
    h, want = eagle1_reference(w, last[:-1], w["embed_tokens.weight"][ids[1:]], head)
    close(got, want[-1])
    child = int(want[-1].argmax())
    got2 = session.logits([1], [ids[-1], child], [-1, 0])[0]
    _, want2 = eagle1_reference(w, torch.cat([last[:-1], h[-1:]]), w["embed_tokens.weight"][[*ids[1:], child]], head)
    close(got2, want2[-1])


def test_medusa_heads_match_the_reference_by_depth(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=2, vocab=VOCAB)
    medusa = write_medusa(tmp_path / "md", target, heads=3, layers=2)
    drafter = specvlm.load(target, draft=str(tmp_path / "md")).drafter
    assert isinstance(drafter, MedusaDrafter)
    ids = random_prompts(1, seed=8, vocab=VOCAB, low=8, high=9)[0]
    last = hidden_states(target, ids)[-1]
    session = drafter.session(DraftContext(tuple(ids), VOCAB, target_hidden=last[:-1]))
    tokens, parents = [ids[-1], 5, 6, 7, 8], [-1, 0, 1, 2, 0]  # depths 0, 1, 2, 3, 1
    got = session.logits([0, 1, 2, 3, 4], tokens, parents)
    with torch.no_grad():
        want = [medusa[i](last[-2]) for i in range(3)]  # head i from the state before the root
    for row, depth in enumerate([0, 1, 2]):
        close(got[row], want[depth])
    assert torch.isinf(got[3]).all()  # below the last head nothing is proposed
    close(got[4], want[1])  # the same for every parent at a depth


# -- lossless decoding -----------------------------------------------------------------------------------------------
WRITERS = {
    "eagle3": lambda f, t: write_eagle3(f, t, dtype=torch.float32),
    "speculators": lambda f, t: write_speculators(f, t, aux=[2, 3, 3]),
    "eagle": write_eagle1,
    "medusa": write_medusa,
}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_every_layout_decodes_like_generate_with_every_tree(tmp_path: Path, layout: str) -> None:
    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    WRITERS[layout](tmp_path / layout, target)
    dec = specvlm.load(target, draft=str(tmp_path / layout))
    for ids in random_prompts(2, seed=9, vocab=VOCAB):
        want = hf_greedy(target, ids, 20)
        for tree in TREES:
            assert dec.generate(None, ids, max_new_tokens=20, tree=tree).tokens == want, (layout, tree)
    mixed = specvlm.load(target, draft=f"{tmp_path / layout}+ngram")  # a mixture works as for any draft
    ids = random_prompts(1, seed=10, vocab=VOCAB)[0]
    assert mixed.generate(None, ids, max_new_tokens=20, tree=TREES[2]).tokens == hf_greedy(target, ids, 20)


CHOICES_PY = """# tree choices, written as Medusa's medusa_choices.py writes them (a list of rank paths per name)
import os

TOPK = 10
# root's 1st..3rd tokens; below the 1st, its head's 1st and 2nd; a spine below the best path
small_7 = [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0]]
as_tuples = [(0,), (1,), (0, 0)]
gap = [[0], [0, 1]]
side_effect = os.system("echo this would have run")
"""


def test_medusa_tree_choices_run_as_static_trees_without_running_the_file(tmp_path: Path, capfd) -> None:
    choices = tmp_path / "medusa_choices.py"
    choices.write_text(CHOICES_PY)
    # sorted by (depth, path): (0,) (1,) (2,) (0,0) (0,1) (1,0) (0,0,0); a node's children take ranks 0, 1, ...
    assert load_growmap(f"{choices}:small_7").parents == (-1, 0, 0, 0, 1, 1, 2, 4)
    assert load_growmap(f"{choices}:as_tuples").parents == (-1, 0, 0, 1)
    (tmp_path / "choices.json").write_text(json.dumps([[0], [1], [0, 0]]))
    assert load_growmap(tmp_path / "choices.json").parents == (-1, 0, 0, 1)
    with pytest.raises(specvlm.GrowmapError, match=r"skips rank 0 below \[0\]"):
        load_growmap(f"{choices}:gap")
    with pytest.raises(specvlm.GrowmapError, match="name one"):
        load_growmap(choices)
    with pytest.raises(specvlm.GrowmapError, match="no list named 'side_effect'"):
        load_growmap(f"{choices}:side_effect")
    assert "would have run" not in capfd.readouterr().out  # the file was parsed, never executed

    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    write_medusa(tmp_path / "md", target)
    dec = specvlm.load(target, draft=str(tmp_path / "md"))
    tree = specvlm.StaticTree(growmap=f"{choices}:small_7")
    for ids in random_prompts(2, seed=12, vocab=VOCAB):
        assert dec.generate(None, ids, max_new_tokens=20, tree=tree).tokens == hf_greedy(target, ids, 20)


def test_a_mixture_of_two_layer_sets_hands_each_part_its_own_columns(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    write_speculators(tmp_path / "sp", target, aux=[1, 4, 5])
    write_eagle1(tmp_path / "e1", target)
    dec = specvlm.load(target, draft=f"{tmp_path / 'sp'}+{tmp_path / 'e1'}")
    assert dec.drafter.target_layers == (1, 4, 5, -1)
    ids = random_prompts(1, seed=11, vocab=VOCAB)[0]
    assert dec.generate(None, ids, max_new_tokens=20, tree=TREES[2]).tokens == hf_greedy(target, ids, 20)


def test_aux_hidden_states_cost_no_extra_target_forward(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    write_eagle3(tmp_path / "e3", target, dtype=torch.float32)
    dec = specvlm.load(target, draft=str(tmp_path / "e3"))
    calls = []
    forward = target.forward
    target.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # type: ignore[method-assign]
    ids = random_prompts(1, seed=12, vocab=VOCAB)[0]
    out = dec.generate(None, ids, max_new_tokens=20, tree=TREES[2])
    assert len(calls) == 1 + len(out.stats.steps)  # the prefill, then one forward per step


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "gemma3"])
def test_eagle3_on_vlm_targets_decodes_like_generate(tmp_path: Path, family: str) -> None:
    model, inputs = build(family)
    layers = model.config.get_text_config().num_hidden_layers
    write_speculators(tmp_path / "sp", model, aux=[0, layers // 2, layers])  # fits any depth of tiny model
    dec = specvlm.load(model, draft=str(tmp_path / "sp"))
    assert isinstance(dec.drafter, EagleDrafter)  # it sees the image positions itself: no text-only wrapper
    want = model.generate(**inputs, do_sample=False, max_new_tokens=16)[0, inputs["input_ids"].shape[1] :].tolist()
    for tree in (TREES[0], TREES[2]):
        assert dec.generate(inputs=inputs, max_new_tokens=16, tree=tree).tokens == want, (family, tree)


# -- refusals ---------------------------------------------------------------------------------------------------------
def test_a_head_made_for_another_target_is_refused_before_decoding(tmp_path: Path) -> None:
    small = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB)
    write_eagle3(tmp_path / "e3", small)
    other = tiny_llama(seed=0, layers=LAYERS, vocab=VOCAB + 8)
    with pytest.raises(specvlm.ModelLoadError, match="t2d covers 96 tokens"):
        specvlm.load(other, draft=str(tmp_path / "e3"))
    w = load_file(str(tmp_path / "e3" / "model.safetensors"))
    w["fc.weight"] = w["fc.weight"][:, :128].contiguous()
    save_file(w, str(tmp_path / "e3" / "model.safetensors"))
    with pytest.raises(specvlm.ModelLoadError, match=r"fc\.weight takes 128 inputs, but this target needs 192"):
        specvlm.load(small, draft=str(tmp_path / "e3"))
    write_medusa(tmp_path / "md", small)
    with pytest.raises(specvlm.ModelLoadError, match=r"this target needs \[104, 64\]"):
        specvlm.load(other, draft=str(tmp_path / "md"))
    with pytest.raises(specvlm.ModelLoadError, match="it holds a medusa checkpoint"):
        specvlm.load(small, draft=f"eagle3:{tmp_path / 'md'}")


class Exploit:
    def __reduce__(self) -> tuple:
        return (print, ("this would have run",))


def test_a_pickled_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=2, vocab=VOCAB)
    write_eagle1(tmp_path / "e1", target)
    with open(tmp_path / "e1" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"fc.weight": Exploit()}, f)
    with pytest.raises(specvlm.ModelLoadError, match=r"refused to load .*pickled code"):
        specvlm.load(target, draft=f"eagle:{tmp_path / 'e1'}")


def test_an_unknown_layout_is_one_error(tmp_path: Path) -> None:
    target = tiny_llama(seed=0, layers=2, vocab=VOCAB)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"something": 1}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x" / "model.safetensors"))
    with pytest.raises(specvlm.ModelLoadError, match="unknown draft layout"):
        specvlm.load(target, draft=f"eagle3:{tmp_path / 'x'}")


# -- sampling keeps the target's law -----------------------------------------------------------------------------
@pytest.mark.slow  # ~40 s per family: 1200 sampled generations
@pytest.mark.parametrize("family", ["mistral", "qwen2_vl"])  # a text target and an M-RoPE VLM target
def test_eagle3_sampling_keeps_the_targets_two_token_law(tmp_path: Path, family: str) -> None:
    from test_family_sampling import TEMPERATURE, chi_square, sample_on_one_thread

    def eagle3(model: nn.Module) -> str:
        layers = model.config.get_text_config().num_hidden_layers
        write_speculators(tmp_path / "sp", model, aux=[0, layers // 2, layers])
        return str(tmp_path / "sp")

    sampled = sample_on_one_thread(family, draft=eagle3, draws=1200)
    assert len(sampled.first_accepted) >= 2, sampled.first_accepted  # drafted tokens are accepted at times
    pvalue, cells = chi_square(sampled, TEMPERATURE)
    print(f"{family}: eagle3, {sampled.draws} draws, {cells} cells, chi-square p={pvalue:.3g}")
    assert pvalue > 1e-3, f"{family}: chi-square p={pvalue:.2e}: sampled pairs differ from the target's law"
