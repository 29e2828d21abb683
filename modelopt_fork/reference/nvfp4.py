"""NVFP4 numerics, written independently of ModelOpt (a second implementation to check it against).

Formats (NVIDIA NVFP4, as ModelOpt exports it and vLLM / TensorRT-LLM read it):

* E2M1 code (4 bits): ``sign << 3 | idx``, magnitude ``E2M1_VALUES[idx]``; two codes per
  byte, the even (lower-index) element in the low nibble.
* Weight: ``W[o, i] = E2M1(code[o, i]) * f32(weight_scale[o, i // 16]) * weight_scale_2``,
  with ``weight_scale`` float8_e4m3fn ``[out, in/16]`` and ``weight_scale_2`` a 0-d float32.
* Activation: quantized at run time per block of 16 under the per-tensor ``input_scale``
  (ModelOpt exports ``input_scale = act_amax / (6 * 448)``; runtimes use
  ``global_scale = 1 / input_scale``). Block scale ``fp8_e4m3(block_amax / (6 * input_scale))``,
  element ``E2M1(|x| / (fp8_scale * input_scale))``, round half to even, saturating at 6.

``quantize_activation`` offers three conventions that differ only in how the last bits of the
divisions round (see its docstring); nothing here imports ``modelopt``.
"""

from __future__ import annotations

import torch

__all__ = [
    "E2M1_VALUES",
    "E2M1_MAX",
    "E4M3_MAX",
    "CONVENTIONS",
    "e2m1_code_table",
    "round_to_e2m1",
    "quantize_e2m1",
    "pack_e2m1",
    "unpack_e2m1",
    "dequantize_weight",
    "quantize_activation",
]

# Magnitudes of the 8 non-negative E2M1 codes (1 sign, 2 exponent, 1 mantissa bit, bias 1).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0
# Midpoints between consecutive magnitudes: a value exactly on one is a tie.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
CONVENTIONS = ("modelopt", "runtime", "vllm")


def e2m1_code_table(device=None) -> torch.Tensor:
    """float32 [16]: the value of each 4-bit code (codes 8..15 are the negatives of 0..7)."""
    mags = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., n/2]`` -> float32 ``[..., n]``; the low nibble is the even element."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed NVFP4 data must be uint8, got {packed.dtype}")
    table = e2m1_code_table(packed.device)
    lo = (packed & 0x0F).long()
    hi = (packed >> 4).long()
    codes = torch.stack([lo, hi], dim=-1).flatten(-2)
    return table[codes]


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (any integer dtype, values 0..15) ``[..., n]`` -> uint8 ``[..., n/2]``."""
    if codes.shape[-1] % 2:
        raise ValueError(f"cannot pack an odd number ({codes.shape[-1]}) of E2M1 codes per row")
    c = codes.to(torch.uint8)
    if bool((c > 15).any()):
        raise ValueError("E2M1 codes must be in 0..15")
    return c[..., 0::2] | (c[..., 1::2] << 4)


def _magnitude_index(r: torch.Tensor) -> torch.Tensor:
    """Index (0..7) of the E2M1 magnitude nearest to ``r >= 0``, ties to the even index, saturating."""
    mids = torch.tensor(_E2M1_MIDPOINTS, dtype=r.dtype, device=r.device)
    # bucketize(right=False): i with mids[i-1] < r <= mids[i]; a tie r == mids[i] lands on the
    # lower neighbour i, which is right when i is even and must move up when i is odd.
    idx = torch.bucketize(r, mids, right=False)
    tie = (idx < len(_E2M1_MIDPOINTS)) & (r == mids[idx.clamp(max=len(_E2M1_MIDPOINTS) - 1)])
    return torch.where(tie & (idx % 2 == 1), idx + 1, idx)


def quantize_e2m1(r: torch.Tensor) -> torch.Tensor:
    """float -> 4-bit E2M1 codes (uint8), round to nearest, ties to even, saturating at +-6.

    The sign bit is set for negative values only (``-0.0`` and negatives that round to zero
    get code 0).
    """
    r = r.float()
    if bool(torch.isnan(r).any()):
        raise ValueError("cannot quantize NaN to E2M1")
    idx = _magnitude_index(r.abs())
    neg = (r < 0) & (idx > 0)
    return (idx | (neg.long() << 3)).to(torch.uint8)


def round_to_e2m1(r: torch.Tensor) -> torch.Tensor:
    """float32 values rounded onto the E2M1 grid (ties to even, saturating), sign kept except for zero."""
    return e2m1_code_table(r.device)[quantize_e2m1(r).long()]


def _to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest FP8 E4M3 value (ties to even), saturating at 448, back in float32."""
    return torch.clamp(v, max=E4M3_MAX).to(torch.float8_e4m3fn).float()


def _scalar(t, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.numel() != 1:
        raise ValueError(f"{name} must be a per-tensor scalar (0-d or [1]), got shape {tuple(t.shape)}")
    t = t.float().reshape(())
    if not bool(torch.isfinite(t)) or not bool(t > 0):
        raise ValueError(f"{name} must be finite and > 0, got {t.item()!r}")
    return t


def dequantize_weight(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2, block_size: int = 16
                      ) -> torch.Tensor:
    """Exported NVFP4 weight -> float32 ``[out, in]``.

    ``weight`` uint8 ``[out, in/2]``, ``weight_scale`` float8_e4m3fn ``[out, in/block_size]``,
    ``weight_scale_2`` per-tensor float32. Computed as ``E2M1 * (f32(block_scale) * weight_scale_2)``,
    the order of ModelOpt's ``NVFP4QTensor.dequantize``, its fake quant and vLLM's
    ``dequantize_to_dtype`` (the other order, ``(E2M1 * block_scale) * weight_scale_2``, rounds
    once instead of twice and differs from them in the last bit for about 4% of elements).
    """
    if weight.dtype != torch.uint8 or weight.dim() != 2:
        raise ValueError(f"weight must be uint8 [out, in/2], got {weight.dtype} {tuple(weight.shape)}")
    if weight_scale.dtype != torch.float8_e4m3fn:
        raise ValueError(f"weight_scale must be float8_e4m3fn, got {weight_scale.dtype}")
    out, half = weight.shape
    n = 2 * half
    if n % block_size or tuple(weight_scale.shape) != (out, n // block_size):
        raise ValueError(f"weight_scale shape {tuple(weight_scale.shape)} does not match weight {tuple(weight.shape)}"
                         f" (expected {(out, n // block_size)} for block size {block_size})")
    ws2 = _scalar(weight_scale_2, "weight_scale_2").to(weight.device)
    q = unpack_e2m1(weight).view(out, n // block_size, block_size)
    return (q * (weight_scale.float() * ws2).unsqueeze(-1)).view(out, n)


def quantize_activation(x: torch.Tensor, input_scale, block_size: int = 16, convention: str = "modelopt"
                        ) -> torch.Tensor:
    """NVFP4 dynamic activation fake quant under the per-tensor ``input_scale``; same shape and dtype as ``x``.

    Blocks of ``block_size`` along the last dim (a trailing partial block is zero-padded).
    With ``s = input_scale`` and ``g = 1 / s`` (the runtimes' global scale):

    ``convention="modelopt"`` (ModelOpt's fake quant, bit-exact with it):
      block scale ``S = fp8(min(block_amax / (6 * s), 448)) * s``; a block with ``S < 1e-5``
      uses ``S = 1.0``; value ``E2M1(|x| / S) * S`` with the sign of ``x``.
    ``convention="runtime"`` (vLLM's NVFP4 emulation / TensorRT-LLM's quantize kernel, which
      multiply by reciprocals): ``sf = fp8(min(g * (block_amax * (1/6)), 448))``;
      ``E2M1(x * (1 / (sf * (1/g))))`` (0 where ``sf == 0``), dequantized as ``q * (sf / g)``
      (vLLM's ``ref_nvfp4_quant_dequant``; a GEMM applies ``input_scale`` after accumulating).
    ``convention="vllm"`` (vLLM 0.25.1's NVFP4 emulation on CUDA, the Triton kernel
      ``_nvfp4_quant_dequant_kernel`` in ``quantization/utils/nvfp4_emulation_utils.py`` that the
      emulation linear and MoE backends run): ``sf = fp8(clamp(g * (block_amax * (1/6)), 448))``,
      ``E2M1(clamp(x * (g / sf), -6, 6))`` (0 where ``sf == 0``), dequantized as ``q * (sf / g)``.

    The two agree except (a) where a value sits within an ulp of an E2M1 or FP8 rounding
    boundary (the reciprocal products round differently from the quotients) and (b) blocks
    whose dequantized scale is below 1e-5: ModelOpt's kernel replaces that scale by 1.0
    (such tiny activations then quantize to ~0), the runtimes keep it (or give 0 when the
    FP8 scale underflows to 0).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; known: {CONVENTIONS}")
    s = _scalar(input_scale, "input_scale").to(x.device)
    shape = x.shape
    n = shape[-1]
    x2 = x.float().reshape(-1, n)
    pad = (-n) % block_size
    if pad:
        x2 = torch.nn.functional.pad(x2, (0, pad))
    xb = x2.view(x2.shape[0], -1, block_size)
    bmax = xb.abs().amax(-1, keepdim=True)
    if convention == "modelopt":
        scale = _to_e4m3(bmax / (E2M1_MAX * s)) * s
        scale = torch.where(scale < 1e-5, torch.ones_like(scale), scale)
        y = round_to_e2m1(xb / scale) * scale
    elif convention == "runtime":
        g = 1.0 / s
        sf = _to_e4m3(g * (bmax * (1.0 / E2M1_MAX)))
        recip = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / (sf * (1.0 / g)))
        y = round_to_e2m1(xb * recip) * (sf / g)
    else:
        g = 1.0 / s
        if not bool(torch.isfinite(g)):
            raise ValueError(f"input_scale {s.item()!r} has no finite reciprocal: vLLM's global scale "
                             "1 / input_scale overflows and the activations become NaN")
        sf = _to_e4m3(g * (bmax * (1.0 / E2M1_MAX)))
        out_scale = torch.where(sf == 0, torch.zeros_like(sf), g / sf)
        y = round_to_e2m1((xb * out_scale).clamp(-E2M1_MAX, E2M1_MAX)) * (sf / g)
    y = y.view(x2.shape)
    if pad:
        y = y[:, :n]
    return y.reshape(shape).to(x.dtype)
