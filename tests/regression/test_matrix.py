"""The MoE export matrix, cell by cell: {bundled architecture} x {NVFP4 config} x {scenario}.

One body for CPU and CUDA. AWQ calibrates every expert linear (fused experts too, patch 0020), so
its cost grows with the expert count. CI runs a fast subset per transformers line: full coverage
on every architecture with NVFP4 and AWQ-lite (Gemma-4's AWQ-lite cell, 41 s, only in the slow
run; its AWQ paths have test_per_expert_awq_full_gemma4.py), AWQ-full on Mixtral (4 experts; the other
architectures' AWQ-full paths have their own regression tests, test_calibrated_is_exported.py,
test_calibrate_export.py and test_awq_full_unrouted_experts.py), and on transformers 5 every
other scenario with AWQ-lite on Mixtral (on 4.57 the per-expert dark-expert paths have their
own tests, test_dark_expert.py); the other cells are ``slow``
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
    if scenario == "full":  # AWQ-full (2-3x AWQ-lite per expert linear) on Mixtral (4 experts)
        if arch == "gemma4-26b-a4b" and cfg == "NVFP4_AWQ_LITE_CFG":  # 41 s on 2 cores; NVFP4 stays
            return False
        return cfg != "NVFP4_AWQ_FULL_CFG" or arch == "mixtral-8x7b"
    return TRANSFORMERS_5 and cfg == "NVFP4_AWQ_LITE_CFG" and arch == "mixtral-8x7b"


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
