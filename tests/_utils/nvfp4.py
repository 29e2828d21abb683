"""NVFP4 helpers for tests: the export path's real quantize->dequantize, and input generators."""

from __future__ import annotations

import torch

E2M1_TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def real_qdq(x: torch.Tensor, amax: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """What export writes and a runtime reads back: NVFP4QTensor.quantize then dequantize."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    gs = amax.float().reshape(()).to(x.device) / (6.0 * 448.0)
    qt, scale, gs_out = NVFP4QTensor.quantize(x, block_size, weights_scaling_factor_2=gs)
    return qt.dequantize(dtype=x.dtype, scale=scale, double_scale=gs_out, block_sizes={-1: block_size})


def fake_qdq(x: torch.Tensor, amax: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """The dynamic block fake-quant op that calibration uses (CPU path or the CUDA kernel)."""
    from modelopt.torch.quantization.tensor_quant import dynamic_block_quantize_op

    # num_bits=4 with 2 exponent bits -> E2M1; scale 8 bits with 4 exponent bits -> E4M3
    return dynamic_block_quantize_op(x, block_size, amax.float().to(x.device), 4, 2, 8, 4)


def gen(kind: str, shape, dtype, seed: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, amax) for one input family; amax is the tensor's own max unless the family says otherwise."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape
    if kind == "normal":
        x = torch.randn(shape, generator=g) * 10 ** (torch.rand((), generator=g) * 6 - 3)
    elif kind == "heavy_tailed":  # Student-t with 2 degrees of freedom: rare large outliers
        z = torch.randn(shape, generator=g)
        chi = torch.randn((2, *shape), generator=g).pow(2).sum(0) / 2
        x = z / chi.sqrt().clamp(min=1e-3)
    elif kind == "zero_blocks":
        x = torch.randn(shape, generator=g)
        mask = torch.rand((rows, cols // 16, 1), generator=g) < 0.3
        x = x.view(rows, cols // 16, 16).masked_fill(mask, 0.0).view(shape)
    elif kind == "ties":
        # block max 6 and global amax 6*448 make the block scale exactly 1.0, so
        # |x| / scale lands exactly on the E2M1 rounding ties
        vals = torch.tensor(E2M1_TIES + E2M1_VALUES)
        idx = torch.randint(0, len(vals), shape, generator=g)
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
        x = vals[idx] * sign
        x.view(rows, cols // 16, 16)[..., 0] = 6.0
        return x.to(dtype).to(device), torch.tensor(6.0 * 448.0)
    elif kind == "saturating":  # calibrated amax below the data: block scales saturate at 448
        x = torch.randn(shape, generator=g) * 4
        x = x.to(dtype)
        return x.to(device), x.float().abs().amax() / 3
    else:
        raise ValueError(kind)
    x = x.to(dtype)
    return x.to(device), x.float().abs().amax()


def assert_equal_bits(a: torch.Tensor, b: torch.Tensor, *, zero_sign: bool = True):
    """Bit-identical. ``zero_sign=False`` treats -0.0 and +0.0 as equal (and nothing else)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if not zero_sign:
        a, b = a + 0.0, b + 0.0  # -0.0 + 0.0 == +0.0; every other value unchanged
    ia = a.detach().cpu().contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32)
    ib = b.detach().cpu().contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32)
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, (
        f"{bad.shape[0]} of {a.numel()} elements differ; first at {bad[0].tolist()}: "
        f"{a[tuple(bad[0])].item()!r} vs {b[tuple(bad[0])].item()!r}"
    )
