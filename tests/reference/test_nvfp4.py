"""Golden tables and agreement tests for the reference NVFP4 numerics (modelopt_fork.reference.nvfp4).

The reference is written independently of ModelOpt; here it is pinned to the format's
definition (every E2M1 code, every FP8 E4M3 byte, decoded from the bit layout) and then
checked against ModelOpt's export path (NVFP4QTensor) and fake quant (patch 0003 on CPU,
the Triton kernel on CUDA).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from _utils.devices import DEVICES
from _utils.nvfp4 import E2M1_TIES, assert_equal_bits, fake_qdq, gen, mismatch_profile, near_rounding_boundary
from modelopt_fork.reference.nvfp4 import (
    dequantize_weight,
    e2m1_code_table,
    pack_e2m1,
    quantize_activation,
    quantize_e2m1,
    round_to_e2m1,
    unpack_e2m1,
)

KINDS = ["normal", "heavy_tailed", "zero_blocks", "ties", "saturating"]


def _decode_e2m1(code: int) -> float:
    """E2M1 from its bits: sign | 2 exponent bits (bias 1) | 1 mantissa bit; exponent 0 is subnormal."""
    sign = -1.0 if code & 0b1000 else 1.0
    exp, man = (code >> 1) & 0b11, code & 1
    mag = man * 0.5 if exp == 0 else (1 + man / 2) * 2.0 ** (exp - 1)
    return math.copysign(mag, sign)


def _decode_e4m3(byte: int) -> float:
    """FP8 E4M3 (fn variant) from its bits: bias 7, no infinities, S.1111.111 is NaN."""
    sign = -1.0 if byte & 0x80 else 1.0
    exp, man = (byte >> 3) & 0xF, byte & 0x7
    if exp == 0xF and man == 0x7:
        return math.nan
    mag = man / 8 * 2.0**-6 if exp == 0 else (1 + man / 8) * 2.0 ** (exp - 7)
    return math.copysign(mag, sign)


class TestGoldenTables:
    def test_e2m1_all_16_codes(self):
        expected = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
        table = e2m1_code_table()
        assert table.tolist() == expected
        assert [_decode_e2m1(c) for c in range(16)] == expected
        assert torch.signbit(table).tolist() == [c >= 8 for c in range(16)]  # code 8 is -0.0

    def test_fp8_e4m3_all_256_bytes(self):
        got = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().tolist()
        for byte, value in enumerate(got):
            want = _decode_e4m3(byte)
            if math.isnan(want):
                assert math.isnan(value), byte
            else:
                assert value == want and math.copysign(1, value) == math.copysign(1, want), (hex(byte), value, want)
        finite = [v for v in got if not math.isnan(v)]
        assert max(finite) == 448.0 and min(v for v in finite if v > 0) == 2.0**-9

    def test_fp8_e4m3_rounding_is_nearest_even_and_saturating(self):
        from modelopt_fork.reference.nvfp4 import _to_e4m3

        grid = sorted({_decode_e4m3(b) for b in range(0x7F)})  # non-negative finite values
        mids = [(a + b) / 2 for a, b in zip(grid, grid[1:], strict=False)]
        # exactly between two neighbours -> the one with the even mantissa (last bit 0)
        got = _to_e4m3(torch.tensor(mids)).tolist()
        for m, lo, hi, g in zip(mids, grid[:-1], grid[1:], got, strict=True):
            lo_code = torch.tensor(lo).to(torch.float8_e4m3fn).view(torch.uint8).item()
            assert g == (lo if lo_code % 2 == 0 else hi), (m, lo, hi, g)
        assert _to_e4m3(torch.tensor([448.0, 465.0, 1e6])).tolist() == [448.0] * 3

    @pytest.mark.parametrize("sign", [1.0, -1.0])
    def test_e2m1_ties_round_to_even(self, sign):
        ties = torch.tensor(E2M1_TIES) * sign
        assert round_to_e2m1(ties).tolist() == [sign * v for v in [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]]

    def test_e2m1_saturates_and_gives_positive_zero(self):
        r = torch.tensor([6.0, 7.9, 1e30, -1e30, -0.1, -0.0, 0.24])
        out = round_to_e2m1(r)
        assert out.tolist() == [6.0, 6.0, 6.0, -6.0, 0.0, 0.0, 0.0]
        assert not torch.signbit(out[4:]).any()

    def test_low_nibble_is_the_even_element(self):
        codes = torch.tensor([[1, 2, 15, 8]])
        assert pack_e2m1(codes).tolist() == [[0x21, 0x8F]]
        assert unpack_e2m1(torch.tensor([[0x21, 0x8F]], dtype=torch.uint8)).tolist() == [[0.5, 1.0, -6.0, -0.0]]


@given(st.lists(st.integers(0, 15), min_size=2, max_size=64).filter(lambda c: len(c) % 2 == 0))
def test_pack_unpack_round_trip(codes):
    c = torch.tensor([codes])
    packed = pack_e2m1(c)
    assert packed.dtype == torch.uint8 and packed.shape == (1, len(codes) // 2)
    assert_equal_bits(unpack_e2m1(packed), e2m1_code_table()[c])
    # quantize_e2m1 is the inverse of the code table (-0.0, code 8, comes back as +0.0, code 0)
    assert quantize_e2m1(unpack_e2m1(packed)).tolist() == [[0 if x == 8 else x for x in codes]]


@given(st.binary(min_size=1, max_size=64))
def test_unpack_pack_round_trip_bytes(data):
    packed = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(1, -1)
    lo, hi = (packed & 0xF).long(), (packed >> 4).long()
    codes = torch.stack([lo, hi], -1).flatten(-2)
    assert torch.equal(pack_e2m1(codes), packed)
    assert_equal_bits(unpack_e2m1(packed), e2m1_code_table()[codes])


@given(st.floats(-100, 100, allow_nan=False, width=32))
def test_e2m1_rounding_is_nearest(r):
    q = round_to_e2m1(torch.tensor([r])).item()
    grid = [s * v for v in e2m1_code_table()[:8].tolist() for s in (1, -1)]
    best = min(abs(r - g) for g in grid)
    assert abs(r - q) == best or (abs(r) > 6 and abs(q) == 6)


@pytest.mark.parametrize("device", DEVICES)
class TestAgainstModelOpt:
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("seed", [0, 1])
    def test_dequantize_weight_matches_export_path(self, device, kind, seed):
        """Our dequantization of what NVFP4QTensor packs == NVFP4QTensor's own dequantize."""
        from modelopt.torch.quantization.qtensor import NVFP4QTensor

        w, amax = gen(kind, (32, 128), torch.float32, seed, device)
        assert w.abs().amax() > 0
        ws2 = amax.float().to(device) / (6.0 * 448.0)
        qt, scale, ws2_out = NVFP4QTensor.quantize(w, 16, weights_scaling_factor_2=ws2)
        theirs = qt.dequantize(dtype=torch.float32, scale=scale, double_scale=ws2_out, block_sizes={-1: 16})
        ours = dequantize_weight(qt._quantized_data, scale, ws2_out)
        # equal as numbers; the sign of zero differs for code 8 (ModelOpt's table decodes it as
        # +0.0, the format's value is -0.0), which no product or sum can observe except a sum of zeros
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert ours.dtype == torch.float32 and ours.shape == w.shape

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_quantize_activation_matches_fake_quant(self, device, dtype, kind, seed):
        """Same global scale (input_scale = amax / (6*448), as export writes it) -> same fake quant."""
        x, amax = gen(kind, (64, 256), dtype, seed, device)
        assert x.abs().amax() > 0
        input_scale = amax.float().to(device) / (6.0 * 448.0)
        ours, theirs = quantize_activation(x, input_scale), fake_qdq(x, amax)
        if device == "cpu":
            assert_equal_bits(ours, theirs)
        else:
            # The Triton kernel divides approximately (PTX div.full.f32, up to 2 ulp, see
            # tests/gpu/RESULTS.md); only values within 2 ulp of a rounding boundary may differ.
            prof = mismatch_profile(ours, theirs, x, input_scale)
            assert prof["unexplained"] == 0 and prof["diff"] <= 0.01 * prof["n"], prof

    @pytest.mark.parametrize("kind", KINDS)
    def test_runtime_convention_differs_only_at_rounding_boundaries(self, device, kind):
        """vLLM / TensorRT-LLM multiply by reciprocals and dequantize with sf / g, not sf * s.

        Same codes and block scales away from rounding boundaries: then the values differ only
        by the dequantization, q * (fp8 * s) vs q * (fp8 / fl(1/s)), four roundings of at most
        half an ulp between them, so relatively by at most 2 * eps (measured: up to 1.32 eps over
        100 cases). A different E2M1 code or FP8 block scale only within 2 ulp of a boundary.
        """
        x, amax = gen(kind, (64, 256), torch.float32, 5, device)
        s = amax.float().to(device) / (6.0 * 448.0)
        a, b = quantize_activation(x, s), quantize_activation(x, s, convention="runtime")
        big = ((a - b).abs() > 2 * torch.finfo(torch.float32).eps * a.abs()).cpu()
        near = near_rounding_boundary(x.cpu(), s.cpu())
        bad = int((big & ~near).sum())
        assert bad == 0, f"{bad} values differ by more than 2 eps away from a rounding boundary"
        if kind == "ties":  # block scales are exact powers of two: everything is exact
            assert_equal_bits(a, b)

    def test_tiny_block_scale_documented_difference(self, device):
        """A block whose dequantized scale is < 1e-5: ModelOpt uses scale 1.0, runtimes keep it."""
        x = torch.zeros(2, 16, device=device)
        x[0] = torch.linspace(-1, 1, 16)  # a normal block sets the global scale
        x[1] = torch.linspace(-1, 1, 16) * 4e-5  # fp8 scale ~0.018 (normal), times s: ~6.6e-6 < 1e-5
        s = torch.tensor(1.0 / (6 * 448))
        a, b = quantize_activation(x, s), quantize_activation(x, s, convention="runtime")
        assert_equal_bits(a[0], b[0])
        assert (a[1] == 0).all()  # |x| / 1.0 rounds to 0
        assert (b[1] != 0).sum() > 8 and (b[1] - x[1]).abs().max() <= 0.125 * x[1].abs().max()


def test_partial_block_shape_and_dtype():
    x, amax = gen("normal", (6, 40), torch.bfloat16, 3)
    x = x.view(2, 3, 40)
    s = amax / (6.0 * 448.0)
    y = quantize_activation(x, s)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_equal_bits(y, fake_qdq(x, amax))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_rejects_bad_scales(bad):
    with pytest.raises(ValueError, match="input_scale"):
        quantize_activation(torch.ones(1, 16), torch.tensor(bad))
    w = torch.zeros(2, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="weight_scale_2"):
        dequantize_weight(w, torch.ones(2, 1).to(torch.float8_e4m3fn), torch.tensor(bad))
    with pytest.raises(ValueError, match="per-tensor"):
        quantize_activation(torch.ones(1, 16), torch.ones(16))
