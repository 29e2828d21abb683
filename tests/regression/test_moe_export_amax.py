"""End to end: NVFP4 export of a tiny MoE whose per-expert linears carry the calibration
state upstream PRs #1264 / #1265 describe. Fail on pristine 0.47.0, pass on the fork."""

from __future__ import annotations

import json

import pytest
import torch

from _utils.tiny_moe import LAYOUTS, TRANSFORMERS_5, build, calib_ids, expert, expert_prefix, set_amax
from modelopt_fork.checkpoint.load import load_tensors

pytestmark = pytest.mark.skipif(
    TRANSFORMERS_5, reason="per-expert nn.Linear experts exist for these architectures only in transformers < 5"
)

NVFP4_SCALE_DIV = 6.0 * 448.0  # E2M1 max * E4M3 max


def _quantize(arch: str):
    import modelopt.torch.quantization as mtq

    model = build(arch, seed=1234)
    ids = calib_ids(seed=1234)
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(ids))
    return model


def _export(model, out):
    from modelopt.torch.export import export_hf_checkpoint

    export_hf_checkpoint(model, export_dir=out)
    tensors = load_tensors(out)
    return tensors, json.loads((out / "hf_quant_config.json").read_text())


def _per_channel_state(arch):
    """A quantized twin whose layer-1 expert-2 gate/up input quantizers hold per-channel amax."""
    torch.manual_seed(7)
    model = _quantize(arch)
    lay = LAYOUTS[arch]
    ex = expert(model, arch, layer=1, idx=2)
    calibrated = getattr(ex, lay.gate).input_quantizer.amax.clone()
    dark = torch.tensor([0, 5, 17, 40])
    per_channel = {}
    for name in (lay.gate, lay.up):
        amax = torch.rand(64) * calibrated + calibrated / 8  # a per-channel profile under the scalar
        amax[dark] = 0.0  # channels no calibration token activated
        per_channel[name] = amax
        set_amax(getattr(ex, name).input_quantizer, amax)
    return model, per_channel


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_per_channel_input_amax_on_expert_exports(arch, tmp_path):
    """#1264: per-channel input amax with dark channels on one expert's gate/up pair exports."""
    model, per_channel = _per_channel_state(arch)
    tensors, _ = _export(model, tmp_path / "ckpt")
    lay, pre = LAYOUTS[arch], expert_prefix(arch, 1, 2)
    gate, up = tensors[f"{pre}.{lay.gate}.input_scale"], tensors[f"{pre}.{lay.up}.input_scale"]
    assert torch.equal(gate, up)  # fused pair shares its input scale
    assert (gate > 0).all() and torch.isfinite(gate).all()
    assert torch.equal(tensors[f"{pre}.{lay.gate}.weight_scale_2"], tensors[f"{pre}.{lay.up}.weight_scale_2"])


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_per_channel_input_amax_exports_scalar_input_scale(arch, tmp_path):
    """Patch 0006: the exported NVFP4 input_scale is 0-d FP32 (vLLM loads nothing else), the
    max over channels of the fused amax, dark channels ignored."""
    model, per_channel = _per_channel_state(arch)
    tensors, _ = _export(model, tmp_path / "ckpt")
    lay, pre = LAYOUTS[arch], expert_prefix(arch, 1, 2)
    expected = torch.maximum(per_channel[lay.gate], per_channel[lay.up]).max().float() / NVFP4_SCALE_DIV
    for name in (lay.gate, lay.up):
        got = tensors[f"{pre}.{name}.input_scale"]
        assert got.shape == torch.Size([]) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # the other experts keep their scalar input_scale
    assert tensors[f"{expert_prefix(arch, 1, 0)}.{lay.gate}.input_scale"].numel() == 1


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
@pytest.mark.parametrize("amax", [1e-44, 1e-36])
def test_vanishing_input_amax_exports_a_usable_scale(arch, amax, tmp_path):
    """#1265: an amax so small that amax / (6 * 448) is zero (1e-44) or subnormal (1e-36) in float32.

    Pristine 0.47.0 fails export ("not positive") or writes a subnormal input_scale whose
    reciprocal, the runtimes' global scale, is infinite. The fork exports the maxbound scale
    (amax := 6, as export_amax does for a zero amax) with a warning. On a linear outside any
    expert group (an expert's is filled from its siblings, patch 0008; test_dark_expert.py).
    """
    model = _quantize(arch)
    set_amax(model.model.layers[0].self_attn.o_proj.input_quantizer, torch.tensor(amax))
    naive = torch.tensor(amax) / NVFP4_SCALE_DIV
    assert naive < torch.finfo(torch.float32).tiny  # the premise: zero or subnormal

    with pytest.warns(UserWarning, match="zero or subnormal input_scale"):
        tensors, _ = _export(model, tmp_path / "ckpt")

    scale = tensors["model.layers.0.self_attn.o_proj.input_scale"]
    assert scale.dtype == torch.float32
    assert scale.item() == (torch.tensor(6.0) / NVFP4_SCALE_DIV).item()
    assert torch.isfinite(1.0 / scale).all()
