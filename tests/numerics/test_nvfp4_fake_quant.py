"""NVFP4 dynamic block fake quant (patch 0003): bit-exact against the export path's real
quantize->dequantize, on CPU and (on a GPU machine) CUDA, plus the documented disagreements."""

from __future__ import annotations

import pytest
import torch

from _utils.devices import DEVICES
from _utils.nvfp4 import E2M1_TIES, assert_equal_bits, fake_qdq, gen, mismatch_profile, real_qdq

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KINDS = ["normal", "heavy_tailed", "zero_blocks", "ties", "saturating"]


@pytest.mark.parametrize("device", DEVICES)
class TestNVFP4FakeQuant:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_real_quant_path(self, device, dtype, kind, seed):
        x, amax = gen(kind, (64, 256), dtype, seed, device)
        assert x.abs().amax() > 0  # never test on zeros alone
        fake, real = fake_qdq(x, amax), real_qdq(x, amax)
        if device == "cpu":
            assert_equal_bits(fake, real)
        else:
            # The Triton kernel divides approximately (PTX div.full.f32, up to 2 ulp); the
            # real path divides exactly. Only elements whose result hangs on the last bits
            # of a division may differ: near an E2M1 tie, or in a block whose FP8 scale is
            # near a rounding boundary. Measured on an H100 (tests/gpu/RESULTS.md): at most
            # 60 of 16384 elements, all of them near such a boundary.
            gs = amax.float().to(device) / (6.0 * 448.0)  # as both paths compute it on CUDA
            prof = mismatch_profile(fake, real, x, gs)
            assert prof["unexplained"] == 0, prof
            assert prof["diff"] <= 0.01 * prof["n"], prof

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_tie_points_round_half_to_even(self, device, dtype):
        # block scale exactly 1.0 (block max 6, global amax 6 * 448)
        ties = torch.tensor(E2M1_TIES)
        x = torch.zeros(2, 16)
        x[:, 0] = 6.0
        x[0, 1:8], x[1, 1:8] = ties, -ties
        out = fake_qdq(x.to(dtype).to(device), torch.tensor(6.0 * 448.0)).float().cpu()
        expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0])
        torch.testing.assert_close(out[0, 1:8], expected, rtol=0, atol=0)
        torch.testing.assert_close(out[1, 1:8], -expected, rtol=0, atol=0)

    def test_negative_values_rounding_to_zero_give_positive_zero(self, device):
        """The kernel negates as 0 - y (+0.0 for y = 0; measured on an H100), and the real
        path's dequant table maps the signed zero code to +0.0: both give +0.0."""
        x = torch.tensor([[6.0, -0.1, 0.1, -0.0] + [1.0] * 12], device=device)
        fake, real = fake_qdq(x, torch.tensor(6.0 * 448.0)), real_qdq(x, torch.tensor(6.0 * 448.0))
        assert not torch.signbit(fake[0, :4]).any()
        assert_equal_bits(fake, real)

    def test_shape_dtype_and_partial_block(self, device):
        x, amax = gen("normal", (15, 48), torch.bfloat16, 3, device)
        x = x.view(3, 5, 48)
        y = fake_qdq(x, amax)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        # a trailing partial block (N % 16 != 0) behaves as if zero-padded
        x = x.reshape(15, 48)[:, :40].contiguous()
        padded = torch.nn.functional.pad(x, (0, 8))
        assert_equal_bits(fake_qdq(x, amax), fake_qdq(padded, amax)[:, :40])


# Disagreements between the kernel's fake quant and the real quantization path, by design
# of the kernel. The CPU path follows the kernel so CPU and GPU calibration agree; each is
# a candidate upstream report.
class TestKernelVsRealPathDisagreements:
    def test_tiny_block_scale_is_replaced_by_one(self):
        """Kernel: a dequantized block scale below 1e-5 becomes 1.0, so the block quantizes
        to zero. Real path: the block keeps its scale and its values."""
        x = torch.full((1, 32), 1e-6)
        x[0, :16] = 1.0  # normal block; the second block has max 1e-6 (scale ~1.7e-7 < 1e-5)
        amax = x.abs().amax()
        fake, real = fake_qdq(x, amax), real_qdq(x, amax)
        assert_equal_bits(fake[:, :16], real[:, :16])
        assert (fake[0, 16:] == 0).all()
        assert (real[0, 16:] > 0).all()

    def test_fp8_block_scale_below_min_subnormal(self):
        """Real path clamps the FP8 block scale to at least 2**-9; the kernel lets it round
        to 0 (then 1.0 by the rule above). Block max / global amax < 2**-10 / 448 shows it."""
        x = torch.full((1, 32), 1.0)
        x[0, 16:] = 1.0 / 2**20  # fp8 units: 448 * 2**-20 ~ 4.3e-4 < 2**-10
        amax = torch.tensor(1.0)
        fake, real = fake_qdq(x, amax), real_qdq(x, amax)
        assert (fake[0, 16:] == 0).all()
        assert (real[0, 16:] != 0).all()

    @pytest.mark.parametrize("amax", [0.0, 1e-40])
    def test_unusable_global_amax_quantizes_as_maxbound(self, amax):
        """A zero or vanishing global amax (scale amax / 2688 zero or subnormal): the fake quant
        uses maxbound (patch 0017), the amax whose scale export writes for it (patch 0002), so
        x quantizes exactly as under amax = 6. The real path handed such a global scale silences
        the tensor (every value dequantizes to about 6 * 448 * scale, ~1e-40), which is why export
        never hands it one."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 32, generator=g) * 3
        assert_equal_bits(fake_qdq(x, torch.tensor(amax)), fake_qdq(x, torch.tensor(6.0)))
        assert not torch.equal(fake_qdq(x, torch.tensor(6.0)), torch.zeros_like(x))
        real = real_qdq(x, torch.tensor(amax))
        assert bool((real.abs() <= 1e-30).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_path_is_bit_identical_to_eager(dtype):
    """Tensors of 2**20+ elements take the torch.compile'd path: same numbers as eager."""
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    for kind, seed in [("normal", 7), ("heavy_tailed", 8), ("zero_blocks", 9), ("ties", 10), ("saturating", 11)]:
        x, amax = gen(kind, (1024, 1024), dtype, seed)
        assert_equal_bits(nvfp4_fake_quant_torch(x, amax, compile=True), nvfp4_fake_quant_torch(x, amax, compile=False))
