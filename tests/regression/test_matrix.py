"""The MoE export matrix, cell by cell: {bundled architecture} x {NVFP4 config} x {scenario}.

One body for CPU and CUDA. CI runs a fast subset per transformers line: every config with
full coverage on every architecture, and on transformers 5 (fused experts) every other scenario
with NVFP4_AWQ_LITE on Qwen3-MoE. On 4.57 the edge scenarios cost 4x as much (a Python loop
per expert linear) and the per-expert dark-expert paths have their own regression tests
(test_dark_expert.py), so there they are ``slow`` with the other cells
(``tox -e matrix-tf457,matrix-tf514``; the GPU run takes them all). Every cell runs the
``runtime`` stage on CPU: the reference runtime in vLLM's convention against the model as
calibrated.
Each test also checks that its scenario produced the coverage it is named for, so a
scenario that silently stops routing as intended fails here.
"""

from __future__ import annotations

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import TRANSFORMERS_5
from modelopt_fork.matrix.axes import all_cells
from modelopt_fork.matrix.cell import run_cell, stages_for


def _fast(arch: str, cfg: str, scenario: str) -> bool:
    return scenario == "full" or (TRANSFORMERS_5 and cfg == "NVFP4_AWQ_LITE_CFG" and arch == "qwen3-30b-a3b")


CELLS = [
    pytest.param(a, c, s, id=f"{a}-{c}-{s}", marks=() if _fast(a, c, s) else pytest.mark.slow)
    for a, c, s in all_cells()
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,cfg,scenario", CELLS)
def test_cell(arch, cfg, scenario, device, tmp_path):
    r = run_cell(arch, cfg, scenario, device=device, out_dir=tmp_path, seed=3, stages=stages_for(device))
    assert r.ok, f"{r.stage}: {r.error}\n{r.detail}"
    dark = r.dark_experts
    if scenario == "dark-experts":
        assert dark["pass0"] > 0, dark
    elif scenario == "awq-cache-only":
        assert dark["pass0"] == 0 and dark["pass1"] > 0, dark
    else:
        assert dark == {"pass0": 0}, dark
    # garbage guard only (broken scales give ~0 or NaN): see test_calibrate_export for
    # measured figures; the reference runtime compares logits tightly
    assert r.cosine_vs_original is not None and r.cosine_vs_original > 0.1
