"""Twins of transformers MoE types from their config class's defaults alone, one per structural family.

Each config.json is what ``save_pretrained`` writes for the class defaults (full-size widths and
depth, ``architectures`` set), as ``modelopt-fork matrix --all-archs`` builds them. Types the
installed transformers lacks (most of them on 4.57) are skipped, naming the version.
"""

from __future__ import annotations

import json

import pytest
import torch

from modelopt_fork.matrix.all_archs import FIXUPS
from modelopt_fork.twin import build_twin
from modelopt_fork.twin.build import PARAM_BUDGET, layer_roles
from modelopt_fork.twin.discover import default_config_dir, moe_model_types
from modelopt_fork.twin.layout import depth, per_layer_keys

# model type -> its family: what its twin must keep
FAMILIES = {
    "laguna": "per-layer lists",  # mlp_layer_types (dense first), layer_types, num_attention_heads_per_layer
    "cohere2_moe": "per-layer lists",  # layer_types (sliding x3, full), mlp_layer_types
    "glm4_moe_lite": "MLA derived keys",  # qk_head_dim = nope + rope, head_dim aliases qk_rope_head_dim
    "deepseek_v3": "MLA derived keys",  # qk_head_dim in the class defaults' config.json
    "jamba": "hybrid",  # periodic: attention every 8th layer from 4, MoE every 2nd from 1
    "nemotron_h": "hybrid",  # layers_block_type: mamba, moe, attention, mlp blocks
    "lfm2_moe": "dense-first",  # num_dense_layers=2 (and a conv/attention hybrid)
    "ernie4_5_moe": "dense-first",  # moe_layer_start_index=1
}
SLOW = {"cohere2_moe", "deepseek_v3"}  # same family as a fast one


def _needs(model_type):
    import transformers
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no model type {model_type!r}")


def _class_default_dir(tmp_path, model_type):
    d = default_config_dir(model_type, tmp_path / model_type)
    if model_type in FIXUPS:
        cfg = json.loads((d / "config.json").read_text())
        FIXUPS[model_type][0](cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=pytest.mark.slow) if t in SLOW else t for t in FAMILIES])
def test_class_default_twin_is_small_keeps_its_layout_and_runs(model_type, tmp_path):
    _needs(model_type)
    family = FAMILIES[model_type]
    src = _class_default_dir(tmp_path, model_type)
    real = json.loads((src / "config.json").read_text())
    twin = build_twin(src, seed=0)
    cfg = twin.config
    n_params = sum(p.numel() for p in twin.model.parameters())
    assert n_params < PARAM_BUDGET["tiny"] // 4, f"{model_type}: {n_params / 1e6:.1f}M parameters"
    moe, attention = layer_roles(cfg)
    n = len(moe)
    assert 2 <= n <= min(8, depth(real))
    assert any(moe) and twin.moe_blocks
    assert attention is None or any(attention), f"{model_type}: no attention layer in {attention}"
    # every per-layer list of the real config is cut to the twin's depth
    twin_dict = cfg.to_dict()
    for k in per_layer_keys(real, depth(real)):
        if isinstance(twin_dict.get(k), (list, str)):
            assert len(twin_dict[k]) == n, f"{model_type}: {k} has {len(twin_dict[k])} entries, {n} layers"
    if family == "MLA derived keys":
        assert cfg.qk_head_dim == cfg.qk_nope_head_dim + cfg.qk_rope_head_dim < real["qk_head_dim"]
    if family == "hybrid":
        assert not all(attention), f"{model_type}: the twin lost its linear/SSM layers"
    if family == "dense-first" or model_type == "laguna":
        assert not moe[0] and moe[1], f"{model_type}: MoE per layer {moe}"
        assert moe.count(False) == 1 or attention is not None  # one dense layer, unless kept for a layout
    if model_type == "laguna":  # a per-layer width list is bounded like the scalar it stands for
        assert cfg.num_attention_heads_per_layer == [cfg.num_attention_heads] * n == [4] * n
    if model_type == "lfm2_moe":
        assert cfg.num_dense_layers == 1 and "full_attention" in cfg.layer_types and "conv" in cfg.layer_types
    ids = torch.randint(0, twin.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = twin.model(ids).logits
    assert logits.shape == (2, 12, twin.vocab_size) and torch.isfinite(logits).all()


def test_every_found_type_is_an_moe_causal_lm():
    """Discovery (one pass over the installed transformers' registries) finds the families above
    that this transformers has, dedupes multimodal wrappers, and finds no dense model."""
    from transformers import CONFIG_MAPPING

    found = {t.model_type: t for t in moe_model_types(include_dense_by_default=True)}
    for t in FAMILIES:
        assert (t in found) == (t in CONFIG_MAPPING), t
    assert "llama" not in found and "qwen3" not in found
    assert found["mixtral"].moe_by_default and found["mixtral"].experts == 8
    if "llama4_text" in found:
        assert "llama4" not in found and "llama4" in found["llama4_text"].wrappers
    if "doge" in found:
        assert not found["doge"].moe_by_default and found["doge"].moe_switched_off == "is_moe=False"


# Types whose twin does not build from class defaults, and why (the detector finds MoE blocks by
# an ``experts`` child holding per-expert modules or 3-D weights): anything else must build.
KNOWN_BUILD_FAILURES = {  # type: (transformers major versions, what the error says)
    "dbrx": ((4, 5), "no MoE block"),  # DbrxExperts keep 2-D [experts * ffn, hidden] weights (w1, v1, w2)
    "jetmoe": ((4, 5), "no MoE block"),  # JetMoeMoE: input_linear / output_linear ParallelExperts
    "granitemoe": ((4,), "no MoE block"),  # transformers 4.57: ParallelExperts, as JetMoE
    "granitemoeshared": ((4,), "no MoE block"),  # likewise
    "granitemoehybrid": ((4,), "NoneType"),  # transformers 4.57: class defaults leave layer_types None
}


def _build_and_run(src):
    from modelopt_fork.twin.layout import is_attention

    real = json.loads((src / "config.json").read_text())
    kinds = real.get("layer_types") or real.get("layers_block_type")
    real_attends = not isinstance(kinds, list) or any(is_attention(k) for k in kinds)
    twin = build_twin(src, seed=0)
    n = sum(p.numel() for p in twin.model.parameters())
    assert n < PARAM_BUDGET["tiny"] // 4, f"{n / 1e6:.1f}M parameters"
    moe, attention = layer_roles(twin.config)
    assert any(moe) and len(moe) <= 8, moe
    assert attention is None or any(attention) or not real_attends, attention  # GraniteMoeHybrid: all Mamba
    ids = torch.randint(0, twin.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(twin.model(ids).logits).all()


@pytest.mark.slow
def test_every_moe_type_builds_a_small_twin_from_class_defaults(tmp_path):
    """One test over every discovered type (no parametrization: discovery would run at collection)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    unexpected, xfailed = [], []
    found = [t.model_type for t in moe_model_types()]
    for model_type in found:
        versions, known = KNOWN_BUILD_FAILURES.get(model_type, ((), None))
        known = known if major in versions else None
        try:
            _build_and_run(_class_default_dir(tmp_path, model_type))
        except Exception as e:  # noqa: BLE001 -- every type is tried, the failures listed
            if known and known in str(e):
                xfailed.append(model_type)
            else:
                unexpected.append(f"{model_type}: {type(e).__name__}: {str(e)[:300]}")
            continue
        if known:
            unexpected.append(f"{model_type} builds now on transformers {transformers.__version__}: "
                              "update KNOWN_BUILD_FAILURES")
    assert not unexpected, "\n".join(unexpected)
    assert set(xfailed) == {t for t, (v, _) in KNOWN_BUILD_FAILURES.items() if major in v and t in found}
