"""Properties of NVFP4 activation scaling factors with zero entries (patch 0002, upstream PR #1265)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from _utils.pristine import pristine_function
from _utils.tensors import DTYPES, amax_tensors, any_floats, assert_bit_identical, tensor_of
from _utils.tiny_moe import set_amax

MODULE = "modelopt.torch.quantization.qtensor.nvfp4_tensor"
FLOOR = torch.finfo(torch.float32).tiny


@functools.lru_cache(maxsize=1)
def _template_quantizer():
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False))
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(torch.randn(4, 32)))
    return model[0].input_quantizer


def _quantizer(amax):
    q = copy.deepcopy(_template_quantizer())
    set_amax(q, amax)
    return q


def _call(fn, q):
    try:
        return None, fn(q)
    except AssertionError as e:
        return e, None


@given(amax=amax_tensors())
def test_bit_identical_to_pristine_wherever_pristine_succeeds(amax):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    pristine = pristine_function(MODULE, "NVFP4QTensor.get_activation_scaling_factor")
    q = _quantizer(amax)
    # Patch 0006 defines a per-channel amax as its max over channels (a 0-d scale):
    # compare against pristine on that reduced amax; a scalar amax is compared as is.
    reduced = amax if amax.numel() == 1 else amax.amax()
    with torch.no_grad():
        sanitized = _quantizer(reduced).export_amax().float()
    want_exc, want = _call(lambda x: pristine(NVFP4QTensor, x), _quantizer(reduced))
    before = q.amax.clone()
    got_exc, got = _call(NVFP4QTensor.get_activation_scaling_factor, q)
    assert_bit_identical(q.amax, before)  # the quantizer's own state is not mutated
    if want_exc is None:
        assert got_exc is None
        assert_bit_identical(got, want)
    else:
        # Pristine rejects zero scales; the fork rejects exactly the negative ones.
        assert (got_exc is not None) == bool((sanitized < 0).any())
        if got_exc is None:
            assert (got > 0).all()


@given(values=st.lists(any_floats, min_size=1, max_size=64))
def test_replace_zero_scales(values):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import _replace_zero_scales

    scale = tensor_of(values, torch.float32, (len(values),))
    before = scale.clone()
    out = _replace_zero_scales(scale)
    assert_bit_identical(scale, before)  # input not modified
    zero = scale == 0  # includes -0.0
    positives = scale[(scale > 0) & torch.isfinite(scale)]
    fill = positives.min() if positives.numel() else torch.tensor(FLOOR)  # never inf: input_scale must be finite
    assert (out[zero] == fill).all() and (out[zero] > 0).all()
    assert_bit_identical(out[~zero], scale[~zero])  # negatives, NaN, inf untouched
    assert out.dtype == torch.float32 and out.shape == scale.shape


@pytest.mark.parametrize("zero", [0.0, -0.0])
@pytest.mark.parametrize("shape", [(), (1,), (5,)])
def test_all_zero_scale_gets_floor(zero, shape):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import _replace_zero_scales

    out = _replace_zero_scales(torch.full(shape, zero, dtype=torch.float32))
    assert out.shape == shape and (out == FLOOR).all()
    assert torch.isfinite(1.0 / out).all()  # runtimes compute 1 / input_scale
    assert FLOOR == 2.0**-126  # the smallest normal float32


NEGATIVE = st.floats(max_value=-1.0, allow_infinity=False, width=32)


@given(amax=amax_tensors(elements=NEGATIVE), dtype=st.sampled_from(DTYPES))
def test_negative_amax_still_asserts(amax, dtype):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    with pytest.raises(AssertionError, match="not positive"):
        NVFP4QTensor.get_activation_scaling_factor(_quantizer(amax.to(dtype)))


# Which inputs still reach upstream's assertion although export_amax maps zero/NaN amax to
# maxbound: only a dynamic-block (NVFP4 activation) quantizer's float32 amax in
# (0, 2688 * 2**-150], whose scale amax / (6 * 448) rounds to zero. bf16/fp16 amax cannot
# (their smallest subnormals divided by 2688 are still float32 denormals > 0), and static
# quantizers clamp amax to finfo.tiny first.
UNDERFLOW_MAX = 2688 * 2.0**-150


@pytest.mark.parametrize("dtype", DTYPES)
def test_underflow_boundary(dtype):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    pristine = pristine_function(MODULE, "NVFP4QTensor.get_activation_scaling_factor")
    edge = torch.tensor(UNDERFLOW_MAX, dtype=torch.float32)
    above = torch.nextafter(edge, torch.tensor(1.0))
    # the smallest positive value of each dtype (float32: the underflow edge itself)
    smallest = {torch.float32: edge, torch.bfloat16: torch.tensor(2.0**-133), torch.float16: torch.tensor(2.0**-24)}
    smallest = smallest[dtype].to(dtype)
    assert smallest.item() > 0
    if dtype == torch.float32:
        with pytest.raises(AssertionError, match="not positive"):
            pristine(NVFP4QTensor, _quantizer(edge))
        assert NVFP4QTensor.get_activation_scaling_factor(_quantizer(edge)).item() == FLOOR
        assert_bit_identical(NVFP4QTensor.get_activation_scaling_factor(_quantizer(above)),
                             pristine(NVFP4QTensor, _quantizer(above)))
    else:  # cannot underflow: fork and pristine agree bit for bit
        assert_bit_identical(NVFP4QTensor.get_activation_scaling_factor(_quantizer(smallest)),
                             pristine(NVFP4QTensor, _quantizer(smallest)))
