"""Twin builder: bundled configs and any config.json build tiny twins of the same architecture."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.series.errors import ForkError
from modelopt_fork.twin import BUNDLED, build_twin, load_config_dict
from modelopt_fork.twin.moe import count_routed_tokens
from modelopt_fork.twin.shrink import text_part

# what each bundled config must keep: causal-LM class, real expert count, top-k
EXPECTED = {
    "qwen3-30b-a3b": ("Qwen3MoeForCausalLM", 128, 8),
    "mixtral-8x7b": ("MixtralForCausalLM", 8, 2),
    "deepseek-v3": ("DeepseekV3ForCausalLM", 256, 8),
    "gemma4-26b-a4b": ("Gemma4ForCausalLM", 128, 8),
}
AVAILABLE = [n for n in BUNDLED if TRANSFORMERS_5 or n != "gemma4-26b-a4b"]


def test_bundle_is_the_promised_set():
    assert set(BUNDLED) == set(EXPECTED)


@pytest.mark.parametrize("name", AVAILABLE)
def test_bundled_twin_keeps_class_layout_and_routing(name):
    cls, _, top_k = EXPECTED[name]
    twin = build_twin(name, seed=0)
    assert type(twin.model).__name__ == cls
    assert twin.config.architectures == [cls]
    assert twin.moe_blocks
    for b in twin.moe_blocks:
        assert b.fused == TRANSFORMERS_5  # transformers decides the layout: fused 3-D on >= 5
        assert b.num_experts == max(4, 2 * top_k)
    assert twin.config.hidden_size == 64
    assert sum(p.numel() for p in twin.model.parameters()) < 2_000_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", AVAILABLE)
def test_config_dtype_is_the_weights_dtype(name, dtype):
    """The twin's config says the dtype its weights are in, as transformers' loaders keep it.

    Every bundled config says bfloat16; a float32 twin whose config still said so was exported
    as bfloat16 weights (ModelOpt packs ``weight.to(config.dtype)``), see
    tests/reference/test_runtime.py::test_reference_matches_fake_quant_on_bundled_twins.
    """
    twin = build_twin(name, seed=0, dtype=dtype)
    assert {p.dtype for p in twin.model.parameters()} == {dtype}
    for config in (twin.config, twin.model.config):
        assert config.dtype == dtype, f"{name}: config.dtype {config.dtype} but weights {dtype}"
        for key in config.sub_configs:
            sub = getattr(config, key, None)
            assert sub is None or sub.dtype == dtype, f"{name}: {key}.dtype {sub.dtype} but weights {dtype}"


@pytest.mark.parametrize("name", AVAILABLE)
def test_real_expert_count(name):
    _, experts, top_k = EXPECTED[name]
    twin = build_twin(name, seed=0, num_experts="real")
    assert {b.num_experts for b in twin.moe_blocks} == {experts}
    ids = torch.randint(0, twin.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), count_routed_tokens(twin.moe_blocks) as counts:
        twin.model(ids)
    for c in counts.values():  # each token goes to exactly top_k experts
        assert int(c.sum()) == 2 * 16 * top_k


def test_deepseek_keeps_shared_expert_dense_layer_and_groups():
    twin = build_twin("deepseek-v3", seed=0)
    layers = twin.model.model.layers
    assert not hasattr(layers[0].mlp, "experts")  # first_k_dense_replace: dense before MoE
    assert hasattr(layers[1].mlp, "shared_experts")
    assert twin.config.n_group * 2 <= twin.config.n_routed_experts
    assert twin.config.topk_group * (twin.config.n_routed_experts // twin.config.n_group) >= 8


@pytest.mark.skipif(TRANSFORMERS_5, reason="per-expert nn.Linear naming exists only in transformers < 5")
@pytest.mark.parametrize("name,names", [("qwen3-30b-a3b", {"gate_proj", "up_proj", "down_proj"}),
                                        ("mixtral-8x7b", {"w1", "w2", "w3"})])
def test_per_expert_linear_naming(name, names):
    twin = build_twin(name, seed=0)
    expert = twin.moe_blocks[0].experts[0]
    assert {n for n, m in expert.named_children() if isinstance(m, nn.Linear)} == names


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers >= 5 has Gemma-4")
def test_gemma4_needs_transformers_5_and_says_so():
    with pytest.raises(ForkError, match="gemma4_text.*not an architecture of transformers"):
        build_twin("gemma4-26b-a4b")


def test_seeded_weights_are_reproducible_and_seed_dependent():
    a, b, c = (build_twin("mixtral-8x7b", seed=s).model.state_dict() for s in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_model_directory_with_only_config_json(tmp_path):
    raw = load_config_dict("qwen3-30b-a3b")[1]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    twin = build_twin(tmp_path, seed=0)
    assert type(twin.model).__name__ == "Qwen3MoeForCausalLM"


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ForkError, match="no model config"):
        build_twin(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_arch", "hidden_size": 8}))
    with pytest.raises(ForkError, match="'no_such_arch' is not an architecture"):
        build_twin(tmp_path)


def test_text_config_of_multimodal_config():
    raw = load_config_dict("gemma4-26b-a4b")[1]
    assert text_part(raw)["model_type"] == "gemma4_text"
