"""Twins with the real layer widths (``widths="real"``): only depth, vocabulary and expert count shrink."""

from __future__ import annotations

import pytest
import torch

from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.twin import BUNDLED, build_twin, load_config_dict
from modelopt_fork.twin.shrink import REAL_WIDTHS_VOCAB, TINY, shrink, text_part

# every width-like key of TINY that a bundled config sets must keep its real value
WIDTH_KEYS = [k for k in TINY if not k.startswith("vocab_size")] + [
    "num_attention_heads",
    "num_key_value_heads",
    "num_global_key_value_heads",
    "hidden_size_per_layer_input",
]
AVAILABLE = [n for n in BUNDLED if TRANSFORMERS_5 or n != "gemma4-26b-a4b"]


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("layers", [2, 4])
def test_real_widths_keep_every_width_and_shrink_depth_and_vocab(name, layers):
    raw = load_config_dict(name)[1]
    real = text_part(raw)
    d = shrink(raw, layers=layers, num_experts=128, widths="real")
    kept = [k for k in WIDTH_KEYS if real.get(k) is not None]
    assert "hidden_size" in kept and ("moe_intermediate_size" in kept or "intermediate_size" in kept)
    for k in kept:
        assert d[k] == real[k], f"{name}: {k} changed from {real[k]} to {d[k]}"
    assert d["vocab_size"] == REAL_WIDTHS_VOCAB < real["vocab_size"]
    assert d["num_hidden_layers"] == layers < real["num_hidden_layers"]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert not isinstance(d.get(k), int) or d[k] < REAL_WIDTHS_VOCAB, (k, d[k])
    # the tiny twin of the same config does shrink the hidden size: the keyword matters
    assert shrink(raw, layers=layers)["hidden_size"] == TINY["hidden_size"] != d["hidden_size"]


def test_unknown_widths_are_refused():
    with pytest.raises(ValueError, match="widths must be one of"):
        shrink(load_config_dict("qwen3-30b-a3b")[1], widths="huge")


@pytest.mark.parametrize("name", AVAILABLE)
def test_real_width_twin_is_built_on_the_device_in_the_dtype(name):
    # on the meta device: real widths are large, and shapes and dtypes are what is tested
    twin = build_twin(name, seed=0, device="meta", dtype=torch.bfloat16, widths="real", num_experts=8)
    real = text_part(load_config_dict(name)[1])
    params = list(twin.model.parameters())
    assert {p.device.type for p in params} == {"meta"}
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert twin.config.hidden_size == real["hidden_size"]
    assert {b.num_experts for b in twin.moe_blocks} == {8}
    embed = twin.model.get_input_embeddings().weight
    assert tuple(embed.shape) == (REAL_WIDTHS_VOCAB, real["hidden_size"])
    expert_inter = real.get("moe_intermediate_size") or real["intermediate_size"]
    experts = twin.moe_blocks[0].experts
    if twin.moe_blocks[0].fused:  # transformers >= 5: [experts, 2 * inter, hidden] and [experts, hidden, inter]
        assert tuple(experts.gate_up_proj.shape) == (8, 2 * expert_inter, real["hidden_size"])
        assert tuple(experts.down_proj.shape) == (8, real["hidden_size"], expert_inter)
    else:
        down = [m for n, m in experts[0].named_children() if n in ("down_proj", "w2")][0]
        assert tuple(down.weight.shape) == (real["hidden_size"], expert_inter)


def test_real_width_twin_runs_and_is_seeded():
    # one layer, four experts (top-2) on CPU: small enough to run a forward in a unit test
    a, b = (build_twin("qwen3-30b-a3b", seed=3, widths="real", layers=1, num_experts=4, top_k=2) for _ in range(2))
    c = build_twin("qwen3-30b-a3b", seed=4, widths="real", layers=1, num_experts=4, top_k=2)
    sa, sb, sc = (t.model.state_dict() for t in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    ids = torch.randint(0, REAL_WIDTHS_VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = a.model(ids).logits
    assert logits.shape == (1, 8, REAL_WIDTHS_VOCAB) and torch.isfinite(logits).all()
