"""MoE configs that are not bundled with the twin builder, written as a user's config.json."""

from __future__ import annotations

import json
from pathlib import Path

# Facts only: the public configs' dimensions of two MoE families with other key names
# (OLMoE: num_experts/num_experts_per_tok, no shared expert; Qwen1.5/2-MoE: a shared expert
# with its own gate) -- shrunk by the builder.
UNBUNDLED = {
    "olmoe": {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048,
              "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
              "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
              "vocab_size": 50304, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
    "qwen2_moe": {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
                  "intermediate_size": 5632, "moe_intermediate_size": 1408,
                  "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
                  "num_experts_per_tok": 4, "decoder_sparse_step": 1, "vocab_size": 151936,
                  "max_position_embeddings": 8192, "bos_token_id": 151643, "eos_token_id": 151643},
}
# Other configs some tests need (not in UNBUNDLED, whose every entry runs all matrix stages in
# tests/twin/test_unbundled.py). Phi-3.5-MoE: transformers 5 loads its ``block_sparse_moe.gate``
# as ``mlp.router`` and saves it back; it routes with sparsemixer, which the reference runtime
# does not implement.
OTHER = {
    "phimoe": {"architectures": ["PhimoeForCausalLM"], "model_type": "phimoe", "hidden_size": 4096,
               "intermediate_size": 6400, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "num_local_experts": 16, "num_experts_per_tok": 2,
               "vocab_size": 32064, "max_position_embeddings": 131072},
}


def write_model_dir(tmp_path: Path, name: str) -> Path:
    """A model directory holding only ``config.json`` for ``name``."""
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**UNBUNDLED, **OTHER}[name]))
    return d
