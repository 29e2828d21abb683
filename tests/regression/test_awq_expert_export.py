"""NVFP4-AWQ export of per-expert nn.Linear experts (transformers < 5) that upstream's name
lists do not cover.

On 0.47.0 (with the earlier patches of the series):
* Mixtral (MixtralBlockSparseTop2MLP, w1/w3/w2) and DeepSeek-V3 experts keep a
  ``pre_quant_scale`` on every expert's down projection: PQS_FUSE_MODULE_MAPPING folds it
  into up_proj for Qwen3MoeMLP only. TensorRT-LLM's NVFP4 MoE loader reads no w2
  pre_quant_scale, so the smoothed w2 weights would run unsmoothed (patch 0010).
* DeepSeek-V3's block (DeepseekV3MoE) is not recognized by is_moe, so the experts'
  gate/up pre_quant_scales are never averaged into one per layer, which fused MoE kernels
  need (patch 0011).
Both are caught by the validator stage of the matrix cell. They concern the checkpoint form that
keeps the AWQ scales (``fold_pre_quant_scale=False``, TensorRT-LLM's NVFP4_AWQ form): the folded
form (the fork's default, patch 0016) exports no pre_quant_scale at all.
"""

from __future__ import annotations

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.cell import run_cell

pytestmark = pytest.mark.skipif(TRANSFORMERS_5, reason="per-expert nn.Linear experts exist only in transformers < 5")


@pytest.mark.parametrize("device", DEVICES)
def test_mixtral_awq_folds_expert_down_scale(device, tmp_path):
    r = run_cell("mixtral-8x7b", "NVFP4_AWQ_LITE_CFG", "full", device=device, out_dir=tmp_path, seed=4,
                 fold_pre_quant_scale=False)
    tensors = load_tensors(tmp_path / "ckpt")
    assert [k for k in tensors if ".experts." in k and k.endswith(".w3.weight")]
    leftover = sorted(k for k in tensors if k.endswith(".w2.pre_quant_scale"))
    assert not leftover, leftover
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"


@pytest.mark.parametrize("device", DEVICES)
def test_deepseek_awq_experts_share_pre_quant_scale(device, tmp_path):
    r = run_cell("deepseek-v3", "NVFP4_AWQ_LITE_CFG", "full", device=device, out_dir=tmp_path, seed=4,
                 fold_pre_quant_scale=False)
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    tensors = load_tensors(tmp_path / "ckpt")
    assert not [k for k in tensors if ".experts." in k and k.endswith("down_proj.pre_quant_scale")]
