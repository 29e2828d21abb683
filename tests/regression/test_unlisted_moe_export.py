"""Export of an MoE whose block type is in none of upstream's model-type lists (OLMoE).

On pristine 0.47.0 with per-expert nn.Linear experts (transformers < 5):
* NVFP4: export fails in get_expert_linear_names' w1/w2/w3 default with
  "AttributeError: Failed to access attribute 'w1' on experts ... 'OlmoeMLP'";
* NVFP4-AWQ: get_experts_list raises "NotImplementedError: olmoeforcausallm not supported".
Fixed by patch 0009 (expert linear names read off the experts). transformers >= 5 fuses
OLMoE's experts, which export through the structural fused-experts path already.
"""

from __future__ import annotations

import json

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from _utils.unbundled import write_model_dir
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.cell import run_cell


@pytest.mark.skipif(TRANSFORMERS_5, reason="per-expert nn.Linear experts exist only in transformers < 5")
@pytest.mark.parametrize("device", DEVICES)
# AWQ-lite (about 40 s on 2 cores) in the slow run (the CI budget)
@pytest.mark.parametrize("cfg", ["NVFP4_DEFAULT_CFG", pytest.param("NVFP4_AWQ_LITE_CFG", marks=pytest.mark.slow)])
def test_unlisted_per_expert_moe_exports(cfg, device, tmp_path):
    r = run_cell(str(write_model_dir(tmp_path, "olmoe")), cfg, "full", device=device, out_dir=tmp_path, seed=2)
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    tensors = load_tensors(tmp_path / "ckpt")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.0.mlp.experts.0.{proj}.weight_scale" in tensors
    quant = json.loads((tmp_path / "ckpt" / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "NVFP4"  # AWQ too: its scales are folded into the model (patch 0016)
