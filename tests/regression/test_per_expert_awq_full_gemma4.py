"""The original report's scenario (upstream PRs #1264 / #1265): Gemma-4 under transformers 5 with
its fused experts decomposed into per-expert ``nn.Linear`` modules (as the reporter's plugin did,
so that AWQ works per expert), NVFP4_AWQ_FULL; calibrate -> export -> validate -> reference runtime.

On pristine 0.47.0 (with only the CPU fake-quant shim, patch 0003; measured) export stops after
the whole calibration, as the report's 2h24m run did: ``per-channel-amax`` (a per-channel expert
input amax, as the report had) on #1264's assertion ``Only support scalar input quant amax``,
``dark-experts`` (experts without calibration tokens) on ``Modules have different quantization
formats`` in the same function (``preprocess_linear_fusion``); ``tiny-amax`` (#1265's vanishing
amax) exports subnormal input scales that the validator rejects. The fork exports checkpoints
that validate for vLLM and TensorRT-LLM and that the reference runtime computes as the
calibrated model does (which also needs the experts' input amax synced over the layer, patch
0019: a Gemma-4 decoder layer is no MoE block class the plugins convert).
"""

from __future__ import annotations

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.cell import run_cell, stages_for

pytestmark = pytest.mark.skipif(not TRANSFORMERS_5, reason="Gemma-4 exists only in transformers >= 5")


@pytest.mark.parametrize("device", DEVICES)
# per-channel-amax and tiny-amax (about 40 s each on 2 cores) in the slow run (the CI budget)
@pytest.mark.parametrize("scenario", ["dark-experts", pytest.param("per-channel-amax", marks=pytest.mark.slow),
                                      pytest.param("tiny-amax", marks=pytest.mark.slow)])
def test_gemma4_per_expert_linears_awq_full(scenario, device, tmp_path):
    r = run_cell("gemma4-26b-a4b", "NVFP4_AWQ_FULL_CFG", scenario, device=device, out_dir=tmp_path, seed=3,
                 stages=stages_for(device), unfuse_experts=True)
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    if scenario == "dark-experts":  # the premise: experts without calibration tokens
        assert r.dark_experts["pass0"] > 0, r.dark_experts
    tensors = load_tensors(tmp_path / "ckpt")
    experts = [k for k in tensors if ".experts." in k and k.endswith(".weight")]
    assert experts and all(tensors[k].dtype.itemsize == 1 for k in experts), experts[:4]  # packed NVFP4
    assert not [k for k in tensors if k.endswith(".pre_quant_scale")]  # folded: what vLLM loads
