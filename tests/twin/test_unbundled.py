"""Generality: MoE architectures that are not bundled, given only as config.json, go through
the twin builder and a matrix cell with no code changes."""

from __future__ import annotations

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from _utils.unbundled import UNBUNDLED, write_model_dir
from modelopt_fork.matrix.cell import run_cell, stages_for


@pytest.mark.parametrize("device", DEVICES)
# AWQ per expert linear costs 3x on transformers 4.57 (the CI budget); there the AWQ path of
# unlisted per-expert MoEs has its own test (test_unlisted_moe_export.py)
@pytest.mark.parametrize("cfg", ["NVFP4_DEFAULT_CFG", pytest.param(
    "NVFP4_AWQ_LITE_CFG", marks=() if TRANSFORMERS_5 else pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(UNBUNDLED))
def test_unbundled_moe_from_config_json(name, cfg, device, tmp_path):
    r = run_cell(str(write_model_dir(tmp_path, name)), cfg, "dark-experts", device=device,
                 out_dir=tmp_path / "out", seed=1, stages=stages_for(device))
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    assert r.dark_experts["pass0"] > 0
