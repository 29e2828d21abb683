"""End to end: an expert whose calibrated input amax vanishes is exported with its siblings' scale.

An expert that saw only near-zero activations during calibration (or whose amax was never
synced with its siblings) can hold an input amax so small that the NVFP4 activation scale
``amax / (6 * 448)`` underflows to zero or is a subnormal float32. Pristine 0.47.0 then fails
export ("activation scaling factor 0.0 not positive") or writes a subnormal scale; patch 0002
floors a zero scale at the smallest normal float32. Either way a runtime's global scale
``1 / input_scale`` is infinite or huge, every block of that expert's inputs saturates and the
expert returns ~0 for every token routed to it (docs/dark-expert-policy.md: relative error
1.0). Patch 0008 fills such an amax from the same projection of the sibling experts (their
max), as export already does for a missing or zero one.

Per-expert input quantizers exist for these architectures in transformers < 5 only (fused
experts share one input quantizer per projection).
"""

from __future__ import annotations

import pytest
import torch

from _utils.devices import DEVICES
from _utils.tiny_moe import LAYOUTS, TRANSFORMERS_5, build, calib_ids, expert, expert_prefix, set_amax
from modelopt_fork.checkpoint.load import load_tensors
from modelopt_fork.twin.moe import capture_inputs

pytestmark = pytest.mark.skipif(
    TRANSFORMERS_5, reason="per-expert nn.Linear experts exist for these architectures only in transformers < 5"
)

NVFP4_SCALE_DIV = 6.0 * 448.0
LAYER, DARK = 1, 2


def _quantized(arch, device):
    import modelopt.torch.quantization as mtq

    model = build(arch, seed=31, device=device)
    ids = calib_ids(seed=31).to(device)
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(ids))
    return model


def _moe_inputs(model, arch, ids):
    moe = getattr(model.model.layers[LAYER], LAYOUTS[arch].moe_attr)
    return capture_inputs(model, moe, ids)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vanishing", [1e-44, 1e-37], ids=["scale-underflows", "scale-subnormal"])
@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_vanishing_expert_input_amax_gets_sibling_scale(arch, vanishing, device, tmp_path):
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt_fork.reference.runtime import load_reference_model

    lay = LAYOUTS[arch]
    model = _quantized(arch, device)
    fp = build(arch, seed=31, device=device)  # same weights, unquantized
    ex = expert(model, arch, layer=LAYER, idx=DARK)
    for name in (lay.gate, lay.up, lay.down):
        set_amax(getattr(ex, name).input_quantizer, torch.tensor(vanishing, device=device))
    assert torch.tensor(vanishing) / NVFP4_SCALE_DIV < torch.finfo(torch.float32).tiny  # the premise
    sibling_amax = {name: max(getattr(expert(model, arch, LAYER, e), name).input_quantizer.amax.float().cpu()
                               for e in range(4) if e != DARK) for name in (lay.gate, lay.up, lay.down)}

    export_hf_checkpoint(model, export_dir=tmp_path / "ckpt")
    tensors = load_tensors(tmp_path / "ckpt")
    pre = expert_prefix(arch, LAYER, DARK)
    for name in (lay.gate, lay.up, lay.down):
        got = tensors[f"{pre}.{name}.input_scale"]
        torch.testing.assert_close(got, sibling_amax[name] / NVFP4_SCALE_DIV, rtol=0, atol=0)

    # Forced through that expert, real hidden states of its layer come out as well as through
    # a calibrated sibling: NVFP4 relative error ~0.23 on these twins (measured, both), not 1.0.
    ref = load_reference_model(tmp_path / "ckpt", device=device, convention="runtime")
    x = _moe_inputs(fp, arch, calib_ids(seed=32).to(device))
    fp_moe = getattr(fp.model.layers[LAYER], lay.moe_attr)
    ref_moe = getattr(ref.model.layers[LAYER], lay.moe_attr)
    with torch.no_grad():
        errors = [((ref_moe.experts[e](x) - fp_moe.experts[e](x)).norm() / fp_moe.experts[e](x).norm()).item()
                  for e in range(4)]
    calibrated = max(err for e, err in enumerate(errors) if e != DARK)
    assert errors[DARK] < 1.25 * calibrated, errors
