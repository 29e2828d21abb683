"""Generality: MoE architectures that are not bundled, given only as config.json, go through
the twin builder and a matrix cell with no code changes."""

from __future__ import annotations

import pytest

from _utils.devices import DEVICES
from _utils.unbundled import UNBUNDLED, write_model_dir
from modelopt_fork.matrix.cell import run_cell


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"])
@pytest.mark.parametrize("name", sorted(UNBUNDLED))
def test_unbundled_moe_from_config_json(name, cfg, device, tmp_path):
    # reference stage on CPU only, as in tests/regression/test_matrix.py (measured on the H100:
    # a CUDA-exported checkpoint vs the CPU fake quant differs by 1.2e-7-1.5e-7 on logits ~0.7)
    stages = ("validate", "reference") if device == "cpu" else ("validate",)
    r = run_cell(str(write_model_dir(tmp_path, name)), cfg, "dark-experts", device=device,
                 out_dir=tmp_path / "out", seed=1, stages=stages)
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    assert r.dark_experts["pass0"] > 0
