"""An unquantized router is named in exclude_modules under the name its weight is saved with.

transformers 5 renames some modules on load and back on save through parameter-key rules
(PhiMoE: checkpoint ``block_sparse_moe.gate.weight`` <-> ``mlp.router.weight`` in memory). On
0.47.0 export reverted the tensors but named the router ``block_sparse_moe.router`` in
``exclude_modules``: no checkpoint module matches it, so a runtime treats the BF16 router as
quantized (our validator: ``router-excluded``). Fixed by patch 0023.
"""

from __future__ import annotations

import json

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from _utils.unbundled import write_model_dir
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.matrix.cell import run_cell


@pytest.mark.skipif(not TRANSFORMERS_5, reason="transformers < 5 keeps PhiMoE's checkpoint names in memory")
@pytest.mark.parametrize("device", DEVICES)
def test_router_excluded_under_its_checkpoint_name(device, tmp_path):
    r = run_cell(str(write_model_dir(tmp_path, "phimoe")), "NVFP4_DEFAULT_CFG", "full", device=device,
                 out_dir=tmp_path, seed=2, stages=("validate",))
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    ckpt = next(p.parent for p in tmp_path.rglob("hf_quant_config.json"))
    exclude = json.loads((ckpt / "hf_quant_config.json").read_text())["quantization"]["exclude_modules"]
    routers = [k.removesuffix(".weight") for k in load_tensors(ckpt) if k.endswith("block_sparse_moe.gate.weight")]
    assert routers and all(r in exclude for r in routers), (routers, exclude)
