"""AWQ reaches transformers 5 fused experts (patch 0020), with the per-expert treatment.

On 0.47.0 AWQ searches quantized linears only: fused 3-D experts (the only expert layout of
transformers 5, where Gemma-4 and Qwen3.5-MoE live) get no smoothing, silently, while the same
model with its experts written as per-expert linears (transformers 4.57's layout, or a user's
decomposition) is smoothed per expert. The fork calibrates fused experts as per-expert linears,
so both layouts of one model export the same checkpoint, tensor for tensor.
"""

from __future__ import annotations

import pytest
import torch

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.axes import archs
from modelopt_fork.matrix.cell import run_cell

pytestmark = pytest.mark.skipif(not TRANSFORMERS_5, reason="fused experts exist only in transformers >= 5")


# the matrix validates and runs the fused exports; here the two layouts are compared. In CI:
# Mixtral (w1/w2/w3 names per expert, 25 s on 2 cores); Gemma-4 (the original report's model,
# 72 s: its per-expert AWQ-full scenario has its own CI test, test_per_expert_awq_full_gemma4.py),
# Qwen3-MoE and DeepSeek-V3 (16 experts each, 20-40 s per pair) in the slow run, as AWQ-full.
CI_ARCHS = ("mixtral-8x7b",)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", ["NVFP4_AWQ_LITE_CFG", pytest.param("NVFP4_AWQ_FULL_CFG", marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch", [a if a in CI_ARCHS else pytest.param(a, marks=pytest.mark.slow)
                                  for a in (archs() if TRANSFORMERS_5 else ["none"])])
def test_fused_and_per_expert_experts_export_the_same_awq_checkpoint(arch, cfg, device, tmp_path):
    fused = run_cell(arch, cfg, "full", device=device, out_dir=tmp_path / "fused", seed=3, stages=())
    split = run_cell(arch, cfg, "full", device=device, out_dir=tmp_path / "split", seed=3, stages=(),
                     unfuse_experts=True)
    assert fused.ok, f"{fused.stage}: {fused.error}\n{fused.detail}"
    assert split.ok, f"{split.stage}: {split.error}\n{split.detail}"
    a, b = load_tensors(tmp_path / "fused" / "ckpt"), load_tensors(tmp_path / "split" / "ckpt")
    assert sorted(a) == sorted(b)
    assert [k for k in a if ".experts." in k]
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:4]}"
