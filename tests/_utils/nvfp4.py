"""NVFP4 helpers for tests: the export path's real quantize->dequantize, and input generators."""

from __future__ import annotations

import torch

E2M1_TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
E2M1_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def real_qdq(x: torch.Tensor, amax: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """What export writes and a runtime reads back: NVFP4QTensor.quantize then dequantize."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    amax = amax.float().reshape(()).to(x.device)
    gs = amax / torch.full((), 6.0 * 448.0, device=x.device)  # the IEEE quotient on any device
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


def assert_equal_bits(a: torch.Tensor, b: torch.Tensor):
    """Bit-identical (the sign of zero included)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    ia = a.detach().cpu().contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32)
    ib = b.detach().cpu().contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32)
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, (
        f"{bad.shape[0]} of {a.numel()} elements differ; first at {bad[0].tolist()}: "
        f"{a[tuple(bad[0])].item()!r} vs {b[tuple(bad[0])].item()!r}"
    )


def _rounding_unstable(v: torch.Tensor, rounder, ulps: int = 2) -> torch.Tensor:
    """True where ``rounder`` gives a different result somewhere in [v - ulps, v + ulps] (float32 ulps)."""
    base = rounder(v)
    unstable = torch.zeros_like(v, dtype=torch.bool)
    for direction in (float("inf"), float("-inf")):
        w = v
        for _ in range(ulps):
            w = torch.nextafter(w, torch.full_like(w, direction))
            unstable |= rounder(w) != base
    return unstable


def _e2m1(r: torch.Tensor) -> torch.Tensor:
    inv = torch.where(r < 2, 2.0, torch.where(r < 4, 1.0, 0.5))
    return torch.clamp(torch.round(r * inv) / inv, max=6.0)


def near_rounding_boundary(x: torch.Tensor, gs: torch.Tensor, block_size: int = 16, ulps: int = 2) -> torch.Tensor:
    """Elements whose NVFP4 result depends on the last bits of a division.

    (a) |x| / scale within ``ulps`` of an E2M1 rounding tie, or (b) the element's block
    has block_amax / (6 * gs) within ``ulps`` of an FP8 E4M3 rounding boundary (so its
    block scale, and every element of the block, can move by one FP8 step). An
    approximate division (up to 2 ulp, like PTX div.full.f32) can only change these.
    """
    x2 = x.float().reshape(-1, x.shape[-1])
    xb = x2.view(x2.shape[0], -1, block_size)
    a = xb.abs()
    gs = gs.float().reshape(())
    v = a.amax(-1, keepdim=True) / (6.0 * gs)
    fp8 = lambda t: torch.clamp(t, max=448.0).to(torch.float8_e4m3fn).float()  # noqa: E731
    block_unstable = _rounding_unstable(v, fp8, ulps)
    scale = fp8(v) * gs
    scale = torch.where(scale >= 1e-5, scale, 1.0)
    elem_unstable = _rounding_unstable(a / scale, _e2m1, ulps)
    return (elem_unstable | block_unstable.expand_as(a)).reshape(x.shape)


def mismatch_profile(got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, gs: torch.Tensor) -> dict:
    """Differing elements, and how many of them are *not* near a rounding boundary."""
    got, ref, x = got.cpu(), ref.cpu(), x.cpu()
    diff = (got.float() != ref.float()) | (torch.signbit(got) != torch.signbit(ref))
    explained = near_rounding_boundary(x, gs.cpu())
    return {"n": x.numel(), "diff": int(diff.sum()), "unexplained": int((diff & ~explained).sum()),
            "near_boundary": int(explained.sum())}
