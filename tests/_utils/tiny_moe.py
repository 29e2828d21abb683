"""Tiny MoE models built from configs with seeded random weights (no hub access)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version

from modelopt_fork.twin.build import calib_ids as twin_calib_ids
from modelopt_fork.twin.scenarios import set_amax  # noqa: F401  (re-exported for the tests)

TRANSFORMERS_5 = Version(transformers.__version__) >= Version("5.0")


@dataclass(frozen=True)
class Layout:
    """Where the per-expert linears of an architecture live."""

    moe_attr: str  # decoder layer attribute holding the MoE block
    gate: str
    up: str
    down: str


# Per-expert nn.Linear layouts (transformers < 5).
LAYOUTS = {
    "qwen3_moe": Layout("mlp", "gate_proj", "up_proj", "down_proj"),
    "mixtral": Layout("block_sparse_moe", "w1", "w3", "w2"),
}
# Architectures whose tiny twin builds under the installed transformers (Gemma-4 needs >= 5;
# under >= 5 every one of them has fused 3-D experts).
ARCHS = ["qwen3_moe", "mixtral"] + (["gemma4"] if TRANSFORMERS_5 else [])


def tiny_config(arch: str, *, num_experts: int = 4, top_k: int = 2):
    common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, head_dim=16)
    if arch == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=num_experts,
                                          num_experts_per_tok=top_k, decoder_sparse_step=1, **common)
        cfg.architectures = ["Qwen3MoeForCausalLM"]
    elif arch == "mixtral":
        cfg = transformers.MixtralConfig(intermediate_size=32, num_local_experts=num_experts,
                                         num_experts_per_tok=top_k, **common)
        cfg.architectures = ["MixtralForCausalLM"]
    elif arch == "gemma4" and TRANSFORMERS_5:
        cfg = transformers.Gemma4TextConfig(
            intermediate_size=128, enable_moe_block=True, num_experts=num_experts, top_k_experts=top_k,
            moe_intermediate_size=32, layer_types=["sliding_attention", "full_attention"], global_head_dim=16,
            hidden_size_per_layer_input=16, vocab_size_per_layer_input=128, sliding_window=16, **common)
        cfg.architectures = ["Gemma4ForCausalLM"]
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} for transformers {transformers.__version__}; "
                         f"known: {ARCHS}")
    return cfg


def build(arch: str, *, seed: int = 0, device: str = "cpu", architectures: bool = True, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tiny_config(arch, **kw)
    if not architectures:
        cfg.architectures = None  # as a model built by hand from a config has it
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.eval().to(device)


def calib_ids(seed: int = 0, batch: int = 4, seq: int = 16, vocab: int = 128) -> torch.Tensor:
    """The twin builder's calibration ids, with this module's defaults (vocabulary 128)."""
    return twin_calib_ids(vocab, seed=seed, batch=batch, seq=seq)


def expert(model, arch: str, layer: int, idx: int):
    return getattr(model.model.layers[layer], LAYOUTS[arch].moe_attr).experts[idx]


def expert_prefix(arch: str, layer: int, idx: int) -> str:
    return f"model.layers.{layer}.{LAYOUTS[arch].moe_attr}.experts.{idx}"
