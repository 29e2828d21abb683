"""Tiny MoE models built from configs with seeded random weights (no hub access)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version

TRANSFORMERS_5 = Version(transformers.__version__) >= Version("5.0")


@dataclass(frozen=True)
class Layout:
    """Where the per-expert linears of an architecture live."""

    moe_attr: str  # decoder layer attribute holding the MoE block
    gate: str
    up: str
    down: str


LAYOUTS = {
    "qwen3_moe": Layout("mlp", "gate_proj", "up_proj", "down_proj"),
    "mixtral": Layout("block_sparse_moe", "w1", "w3", "w2"),
}


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
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; known: {sorted(LAYOUTS)}")
    return cfg


def build(arch: str, *, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(arch, **kw))
    return model.eval()


def calib_ids(seed: int = 0, batch: int = 4, seq: int = 16, vocab: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def expert(model, arch: str, layer: int, idx: int):
    return getattr(model.model.layers[layer], LAYOUTS[arch].moe_attr).experts[idx]


def expert_prefix(arch: str, layer: int, idx: int) -> str:
    return f"model.layers.{layer}.{LAYOUTS[arch].moe_attr}.experts.{idx}"


def set_amax(quantizer, value: torch.Tensor) -> None:
    """Replace a quantizer's amax, shape changes allowed (as a per-channel calibrator would leave it)."""
    if hasattr(quantizer, "_amax"):
        delattr(quantizer, "_amax")
    quantizer.amax = value
