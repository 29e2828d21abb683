"""The Triton NVFP4 fake-quant kernel against the CPU path (patch 0003), on a CUDA GPU.

Two classes of difference were found on an H100 (benchmarks/gpu_nvfp4_kernel_vs_cpu.py,
figures in tests/gpu/RESULTS.md), and nothing else:

1. Global scale. The kernel's wrapper (and export) computed ``amax / (6 * 448)`` with torch on
   CUDA, which divides by a Python scalar as a multiplication by its float32 reciprocal; the
   CPU divides exactly. For ~1/4 of amax values the two differ by one ulp: every output
   element of a float32 tensor is then one ulp off, and where the weights sit on E2M1 ties (as
   after AWQ's folded scales) elements round a whole FP4 step apart. A model calibrated on CUDA
   then packed another checkpoint than the same model on the CPU, and the vLLM stage's
   noise floor (the CUDA model vs its CPU copy) was 0.003-0.04 mean |delta log-prob| in AWQ
   cells (H200, 2026-12-01, benchmarks/gpu_awq_floor_probe.py). Patch 0021 divides by a
   tensor (the IEEE quotient on both devices).
2. Division in the kernel. ``|x| / scale`` and ``block_amax / (6 * gs)`` used Triton's
   float32 division, which is not correctly rounded; it changed elements whose result hangs
   on the last bits of a quotient: within 2 ulp of an E2M1 tie (one FP4 step) or in a block
   whose FP8 scale is within 2 ulp of a rounding boundary (one FP8 step for the block). The
   calibrated model on CUDA then differed from the checkpoint export packs, and vLLM agreed
   with the checkpoint, not with it (docs/vllm-stage.md). Patch 0018 divides correctly
   rounded (measured on an H200, 2026-12-01: 0 of 524,288 elements differ, float32 and
   bfloat16, given the same global scale).
"""

from __future__ import annotations

import pytest
import torch

from _utils.nvfp4 import gen, mismatch_profile

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["normal", "heavy_tailed", "zero_blocks", "ties", "saturating"]


def _kernel(x, amax):
    from modelopt.torch.kernels.quantization.gemm.fp4_kernel_hopper import fp4_fake_quant_block

    return fp4_fake_quant_block(x.cuda(), amax.float().cuda()).cpu()


def _unambiguous(amax: torch.Tensor) -> torch.Tensor:
    """The next float32 amax >= ``amax`` whose global scale is the same either way it is divided
    (IEEE quotient, or CUDA's multiplication by the float32 reciprocal): isolates class 2."""
    a = amax.float().reshape(())
    recip = torch.tensor(1.0) / torch.tensor(6.0 * 448.0)
    while not torch.equal(a * recip, a / (6.0 * 448.0)):
        a = torch.nextafter(a, torch.tensor(float("inf")))
    return a


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_equals_cpu_path_given_the_same_global_scale(dtype, kind, seed):
    """Class 2 (patch 0018), on amax values for which class 1 cannot arise."""
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    x, amax = gen(kind, (512, 1024), dtype, seed)
    amax = _unambiguous(amax)
    gs = amax / (6.0 * 448.0)
    yk = _kernel(x, amax)
    yc = nvfp4_fake_quant_torch(x, amax, global_scale=gs)
    prof = mismatch_profile(yk, yc, x, gs)
    assert prof["diff"] == 0, prof  # patch 0018: no division-rounding class left


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernel_equals_cpu_path(dtype, kind, seed):
    """Both classes (patches 0018 and 0021): the CUDA kernel computes what the CPU computes."""
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    x, amax = gen(kind, (512, 1024), dtype, seed)
    yk, yc = _kernel(x, amax), nvfp4_fake_quant_torch(x, amax)
    prof = mismatch_profile(yk, yc, x, amax.float() / (6.0 * 448.0))
    assert prof["diff"] == 0, prof


def test_global_scale_on_cuda_is_a_reciprocal_multiply():
    """Why class 1 existed: torch's own division of a CUDA tensor by a Python scalar."""
    g = torch.Generator().manual_seed(0)
    amax = torch.rand(100_000, generator=g) * 10 ** torch.randint(-6, 6, (100_000,), generator=g).float()
    on_cuda = (amax.cuda() / (6.0 * 448.0)).cpu()
    exact = amax / (6.0 * 448.0)  # CPU: correctly rounded
    recip = amax * (torch.tensor(1.0) / torch.tensor(6.0 * 448.0))
    assert torch.equal(on_cuda, recip)
    differ = on_cuda != exact
    ulps = (on_cuda.view(torch.int32) - exact.view(torch.int32)).abs()
    assert ulps.max() <= 1
    assert 0.05 < differ.float().mean() < 0.5  # measured ~0.23


def test_export_global_scales_equal_cpu():
    """Class 1 at export (patch 0021): weight_scale_2 and input_scale do not depend on the device."""
    from modelopt.torch.quantization.nn import TensorQuantizer
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    g = torch.Generator().manual_seed(5)
    amax = torch.rand(2000, generator=g) * 10 ** torch.randint(-3, 3, (2000,), generator=g).float()
    assert not torch.equal((amax.cuda() / 2688.0).cpu(), amax / 2688.0)  # the premise
    cfg = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
    differ = 0
    for a in amax[:200]:
        q = TensorQuantizer()
        q.set_from_attribute_config(cfg)
        q.amax = a
        on_cpu = (NVFP4QTensor.get_weights_scaling_factor_2_from_quantizer(q),
                  NVFP4QTensor.get_activation_scaling_factor(q))
        q.cuda()
        on_cuda = (NVFP4QTensor.get_weights_scaling_factor_2_from_quantizer(q).cpu(),
                   NVFP4QTensor.get_activation_scaling_factor(q).cpu())
        differ += sum(not torch.equal(x, y) for x, y in zip(on_cpu, on_cuda, strict=True))
    assert differ == 0
