"""The NVFP4 activation scaling factor export writes (patches 0002 and 0006, upstream PR #1265).

Three properties, each drawn over every shape (0-d, [1], per-channel), mixed signs, NaN,
zeros, float32 subnormals and the three amax dtypes:

1. **Scalar path unchanged**: where pristine 0.47.0 exports a usable scale (a normal float32),
   the fork exports the same bits; where pristine raises for a negative amax, so does the fork.
2. **Negatives assert for any shape**: an amax with any negative entry is rejected with
   pristine's "not positive" assertion, per-channel or not.
3. **Zeros (and vanishing amaxes) get a usable scale**: without negative entries the result is
   one 0-d scale whose reciprocal is finite: the max over live channels (NaN counting as
   maxbound, as export_amax makes it; dead zero channels ignored), or the maxbound scale where
   that max gives a zero or subnormal scale (calibration saw no, or only vanishing, inputs).
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, example, given
from hypothesis import strategies as st

from _utils.pristine import pristine_function
from _utils.tensors import DTYPES, amax_tensors, any_floats, assert_bit_identical
from _utils.tiny_moe import set_amax

MODULE = "modelopt.torch.quantization.qtensor.nvfp4_tensor"
TINY = torch.finfo(torch.float32).tiny
MAXBOUND_SCALE = torch.tensor(6.0) / (6.0 * 448.0)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return None, fn(q)
        except AssertionError as e:
            return e, None


def _fork(amax):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    q = _quantizer(amax)
    before = q.amax.clone()
    out = _call(NVFP4QTensor.get_activation_scaling_factor, q)
    assert_bit_identical(q.amax, before)  # the quantizer's own state is not mutated
    return out


def _pristine(amax):
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    pristine = pristine_function(MODULE, "NVFP4QTensor.get_activation_scaling_factor")
    return _call(lambda q: pristine(NVFP4QTensor, q), _quantizer(amax))


def _usable(scale: torch.Tensor) -> bool:
    return bool((scale.float() >= TINY).all() and torch.isfinite(scale).all())


@given(amax=amax_tensors(shape=()))
def test_scalar_path_unchanged_where_pristine_exports_a_usable_scale(amax):
    want_exc, want = _pristine(amax)
    got_exc, got = _fork(amax)
    if want_exc is not None:  # pristine rejects negative (and underflowing) scales
        if bool(amax.float() < 0):
            assert got_exc is not None and "not positive" in str(got_exc)
        else:
            assert got_exc is None and torch.equal(got, MAXBOUND_SCALE)
    elif _usable(want):
        assert got_exc is None
        assert_bit_identical(got, want)
    else:  # a subnormal scale pristine exported: the runtimes' 1 / scale is not finite
        assert got_exc is None and torch.equal(got, MAXBOUND_SCALE)


MIXED = st.lists(any_floats, min_size=1, max_size=16).filter(lambda v: any(x < 0 for x in v))


@given(values=MIXED, dtype=st.sampled_from(DTYPES), as_scalar=st.booleans())
@example(values=[-1.401298464324817e-45], dtype=torch.float32, as_scalar=False)  # its scale rounds to -0.0
def test_any_negative_entry_asserts_for_every_shape(values, dtype, as_scalar):
    amax = torch.tensor(values[:1] if as_scalar else values, dtype=torch.float32).to(dtype)
    if as_scalar:
        amax = amax.reshape(())
    if not bool((amax < 0).any()):  # a negative that the dtype rounds to -0.0 is no longer negative
        return
    exc, _ = _fork(amax)
    assert exc is not None and "not positive" in str(exc)


NON_NEGATIVE = st.one_of(st.floats(min_value=0.0, allow_infinity=False, width=32),
                         st.sampled_from([0.0, -0.0, float("nan"), 1e-45, 1e-40, 1e-38, 6.0, 3e38]))


@given(amax=amax_tensors(elements=NON_NEGATIVE))
def test_without_negatives_the_scale_is_one_usable_scalar(amax):
    # an infinite amax (calibration saw inf) exports an infinite scale, as in pristine; the
    # validator's scalar-value rule rejects that checkpoint
    assume(not bool(torch.isinf(amax).any()))
    exc, got = _fork(amax)
    assert exc is None
    # one scale: 0-d for a per-channel amax, the amax's own shape (0-d or [1]) for a scalar one
    assert got.shape == (amax.shape if amax.numel() == 1 else torch.Size([])) and got.dtype == torch.float32
    assert _usable(got) and torch.isfinite(1.0 / got)
    live = torch.nan_to_num(amax.float(), nan=6.0)
    expected = live.amax() / (6.0 * 448.0)
    if not _usable(expected):
        expected = MAXBOUND_SCALE
    assert_bit_identical(got, expected.reshape(got.shape))


@given(amax=amax_tensors(shape=(8,), elements=NON_NEGATIVE))
def test_per_channel_exports_what_its_reduced_scalar_exports(amax):
    assume(not bool(torch.isinf(amax).any()))
    live = torch.where(amax == 0, torch.zeros_like(amax), torch.nan_to_num(amax, nan=6.0))
    reduced = live.amax() if bool((live > 0).any()) else torch.zeros((), dtype=amax.dtype)
    assert_bit_identical(_fork(amax)[1], _fork(reduced)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_smallest_normal_scale_is_where_replacement_stops(dtype):
    """float32 amax just above / below 2**-126 * 2688: kept bit for bit / replaced; bf16 and
    fp16 amaxes are normal enough never to reach the edge (their smallest values / 2688 are
    float32 normals or exactly representable subnormals, checked here)."""
    edge = torch.tensor(TINY, dtype=torch.float32) * (6.0 * 448.0)
    for amax in (edge, torch.nextafter(edge, torch.tensor(1.0)), torch.nextafter(edge, torch.tensor(0.0))):
        amax = amax.to(dtype)
        if amax.item() == 0:
            continue
        want_exc, want = _pristine(amax)
        got = _fork(amax)[1]
        if want_exc is None and _usable(want):
            assert_bit_identical(got, want)
        else:
            assert torch.equal(got, MAXBOUND_SCALE)
