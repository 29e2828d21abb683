"""The NVFP4 global scale ``amax / (6 * 448)`` is the IEEE float32 quotient on every device (patch 0021).

On CUDA, torch divides a tensor by a Python scalar as a multiplication by the scalar's float32
reciprocal, which is one ulp off the quotient for about a quarter of amax values. Pristine 0.47.0
computes the weight's ``weight_scale_2``, the ``input_scale`` and the fake-quant kernel's global
scale that way, so the same calibrated model packs another checkpoint on CUDA than on the CPU and
computes differently (measured on an H200: the vLLM stage's CUDA-vs-CPU floor of AWQ cells,
0.003-0.04 mean |delta log-prob|, benchmarks/gpu_awq_floor_probe.py). Red on pristine on CUDA;
on the CPU both are the quotient (the CPU item checks the reference itself).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _utils.devices import DEVICES

NVFP4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}


def _amaxes(seed: int, n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) * 10 ** torch.randint(-4, 4, (n,), generator=g).float() + 1e-6


def _ieee(amax: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(amax.numpy().astype(np.float32) / np.float32(6.0 * 448.0))


@pytest.mark.parametrize("device", DEVICES)
def test_export_scales_are_the_ieee_quotient(device):
    from modelopt.torch.quantization.nn import TensorQuantizer
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    amax = _amaxes(seed=11, n=300)
    q = TensorQuantizer()
    q.set_from_attribute_config(NVFP4)
    q.to(device)
    got_w, got_a = [], []
    for a in amax:
        q.amax = a.to(device)
        got_w.append(NVFP4QTensor.get_weights_scaling_factor_2_from_quantizer(q).cpu().reshape(()))
        got_a.append(NVFP4QTensor.get_activation_scaling_factor(q).cpu().reshape(()))
    want = _ieee(amax)
    torch.testing.assert_close(torch.stack(got_w), want, rtol=0, atol=0)  # weight_scale_2
    torch.testing.assert_close(torch.stack(got_a), want, rtol=0, atol=0)  # input_scale


@pytest.mark.parametrize("device", DEVICES)
def test_weight_scale_2_from_the_weight_is_the_ieee_quotient(device):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    g = torch.Generator().manual_seed(12)
    ws = [torch.randn(32, 64, generator=g) * float(s) for s in _amaxes(seed=13, n=200)]
    got = torch.stack([NVFP4QTensor.get_weights_scaling_factor_2(w.to(device)).cpu().reshape(()) for w in ws])
    want = _ieee(torch.stack([w.abs().amax() for w in ws]))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_uses_the_ieee_global_scale(device):
    """The calibration-time fake quant (CPU path or the CUDA kernel) under the exact global scale."""
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch
    from modelopt.torch.quantization.tensor_quant import dynamic_block_quantize_op

    g = torch.Generator().manual_seed(14)
    amaxes = _amaxes(seed=15, n=24)
    for a in amaxes:
        x = torch.randn(64, 256, generator=g) * float(a) / 3
        amax = x.abs().amax()
        got = dynamic_block_quantize_op(x.to(device), 16, amax.to(device), 4, 2, 8, 4).cpu()
        want = nvfp4_fake_quant_torch(x, amax, global_scale=_ieee(amax.reshape(1)).reshape(()))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
