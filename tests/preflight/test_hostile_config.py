"""Hostile config.json for preflight: every size bounded (or a clear error), nothing fetched from the
Hub, exit 2 for bad input. Only configs are built here (on the meta device), so each case is fast."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from _utils.unbundled import UNBUNDLED
from modelopt_fork.cli import main
from modelopt_fork.series.errors import ForkError
from modelopt_fork.twin.build import twin_config
from modelopt_fork.twin.shrink import shrink

BUDGET = 10_000_000  # the tiny twin's parameter budget (modelopt_fork.twin.build.PARAM_BUDGET)
OLMOE = UNBUNDLED["olmoe"]
# public config of databricks/dbrx-instruct: its own key names for every size
DBRX = {"architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": 6144, "n_heads": 48,
        "n_layers": 40, "max_seq_len": 32768, "vocab_size": 100352,
        "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "rope_theta": 500000},
        "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4}}
DBRX_4096 = {**DBRX, "ffn_config": {**DBRX["ffn_config"], "moe_num_experts": 4096}}  # nested: not shrunk
# LongCat-Flash's public config (trimmed): num_layers, expert_ffn_hidden_size
LONGCAT = {"model_type": "longcat_flash", "num_layers": 28, "hidden_size": 6144, "ffn_hidden_size": 12288,
           "expert_ffn_hidden_size": 2048, "n_routed_experts": 512, "moe_topk": 12, "num_attention_heads": 64,
           "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128, "vocab_size": 131072}
HUB = {"auto_map": {"AutoModelForCausalLM": "evil-org/evil--modeling_evil.EvilForCausalLM"},
       "attn_implementation": "evil-org/evil-flash-kernel", "experts_implementation": "evil-org/evil-moe"}
HOSTILE = {
    "dbrx": DBRX,
    "dbrx-4096-experts": DBRX_4096,
    "longcat-flash": LONGCAT,
    "olmoe-no-widths": {k: v for k, v in OLMOE.items() if k not in ("hidden_size", "intermediate_size",
                                                                      "vocab_size", "num_attention_heads")},
    "olmoe-hub-attrs": {**OLMOE, **HUB, "text_config": {**OLMOE, **HUB}},
    "olmoe-many-experts": {**OLMOE, "num_experts": 1_000_000},
    "olmoe-string-width": {**OLMOE, "hidden_size": "wide", "num_experts_per_tok": "eight"},
    "text-config-not-a-dict": {**OLMOE, "text_config": 5},
    "model-type-not-a-string": {**OLMOE, "model_type": ["olmoe"]},
    "not-a-dict": [OLMOE],
}


def _write(tmp_path, name, cfg) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _params(cfg) -> int:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("experts", [None, "real"])
def test_any_config_gives_a_bounded_twin_or_a_fork_error(name, experts, tmp_path):
    src = _write(tmp_path, name, HOSTILE[name])
    try:
        _, cfg = twin_config(src, num_experts=experts)
    except ForkError as e:
        assert "\n" not in str(e)
        return
    assert _params(cfg) <= BUDGET


def test_own_key_names_are_shrunk_too(tmp_path):
    # measured before: a dbrx twin of 547M parameters, a longcat_flash twin of 2.1B with 56 layers
    _, cfg = twin_config(_write(tmp_path, "dbrx", DBRX))
    assert (cfg.d_model, cfg.n_layers, cfg.ffn_config.ffn_hidden_size) == (64, 2, 128)
    _, cfg = twin_config(_write(tmp_path, "longcat", LONGCAT))
    assert (cfg.num_layers, cfg.expert_ffn_hidden_size) == (2, 32)


def test_over_budget_error_names_the_unshrunk_keys(tmp_path):
    with pytest.raises(ForkError, match="budget") as ei:
        twin_config(_write(tmp_path, "dbrx", DBRX_4096))
    assert "ffn_config.moe_num_experts=4096" in str(ei.value)


def test_missing_widths_are_shrunk_not_left_at_class_defaults(tmp_path):
    _, cfg = twin_config(_write(tmp_path, "olmoe", HOSTILE["olmoe-no-widths"]))
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_attention_heads) == (64, 128, 128, 4)


def test_hub_fetching_attributes_are_stripped(tmp_path):
    d = shrink(HOSTILE["olmoe-hub-attrs"])
    text = json.dumps(d)
    assert "evil" not in text and "auto_map" not in text
    _, cfg = twin_config(_write(tmp_path, "hub", HOSTILE["olmoe-hub-attrs"]))
    assert "evil" not in json.dumps(cfg.to_dict(), default=str)
    # _experts_implementation exists from transformers 5 on
    assert "evil" not in str(cfg._attn_implementation)
    assert "evil" not in str(getattr(cfg, "_experts_implementation", None))


def test_good_bundled_twins_fit_the_budget_with_margin():
    from modelopt_fork.matrix.axes import archs

    for name in archs():  # the bundled twins this transformers has (Gemma-4 needs >= 5)
        for experts in (None, "real"):
            assert _params(twin_config(name, num_experts=experts)[1]) * 4 < BUDGET, (name, experts)


@pytest.mark.parametrize("cfg, why", [
    (DBRX_4096, "budget"),
    ({**OLMOE, "text_config": 5}, "text_config"),
    ({**OLMOE, "hidden_size": "wide"}, "hidden_size"),
])
def test_preflight_exits_2_for_bad_input_with_one_line(cfg, why, tmp_path, capsys):
    rc = main(["preflight", _write(tmp_path, "m", cfg), "--qformat", "nvfp4"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert why in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_non_utf8_config_is_a_fork_error(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ForkError, match="not valid JSON"):
        twin_config(str(tmp_path))


def test_preflight_exits_2_for_a_missing_model_and_bad_experts(tmp_path, capsys):
    assert main(["preflight", str(tmp_path / "nothing-here"), "--qformat", "nvfp4"]) == 2
    assert "no model config" in capsys.readouterr().err
    for bad in ("many", "0"):
        with pytest.raises(SystemExit) as ei:
            main(["preflight", "qwen3-30b-a3b", "--experts", bad])
        assert ei.value.code == 2
    assert main(["preflight", "qwen3-30b-a3b", "--experts", "1"]) == 2  # fewer experts than top-k 8
    assert "larger than the number of experts" in capsys.readouterr().err
