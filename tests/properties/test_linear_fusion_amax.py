"""Properties of preprocess_linear_fusion's input amax handling (patch 0001, upstream PR #1264)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given
from hypothesis import strategies as st

from _utils.pristine import pristine_function
from _utils.tensors import DTYPES, amax_tensors, assert_bit_identical
from _utils.tiny_moe import set_amax

MODULE = "modelopt.torch.export.quant_utils"


class _Fused(nn.Module):
    """Three linears that share their input (q/k/v, or gate/up plus one)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(48, 16, bias=False)
        self.b = nn.Linear(48, 16, bias=False)
        self.c = nn.Linear(48, 16, bias=False)

    def forward(self, x):
        return self.a(x) + self.b(x) + self.c(x)


@functools.lru_cache(maxsize=1)
def _template():
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    model = _Fused()
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(torch.randn(8, 48)))
    return model


def _modules(amaxes):
    model = copy.deepcopy(_template())
    mods = [model.a, model.b, model.c][: len(amaxes)]
    for m, a in zip(mods, amaxes, strict=True):
        set_amax(m.input_quantizer, a)
    return mods


def _fork():
    from modelopt.torch.export.quant_utils import preprocess_linear_fusion

    return preprocess_linear_fusion


def _outcome(fn, amaxes):
    mods = _modules(amaxes)
    try:
        fn(mods)
    except Exception as e:  # the differential compares exception types too
        return type(e), None
    return None, [m.input_quantizer.amax for m in mods]


scalar_shapes = st.sampled_from([(), (1,)])


@given(data=st.data(), n=st.integers(2, 3), dtype=st.sampled_from(DTYPES))
def test_scalar_path_bit_identical_to_pristine(data, n, dtype):
    shape = data.draw(scalar_shapes)
    amaxes = [data.draw(amax_tensors(shape=shape, dtype=dtype)) for _ in range(n)]
    pristine = pristine_function(MODULE, "preprocess_linear_fusion")
    want_exc, want = _outcome(pristine, amaxes)
    got_exc, got = _outcome(_fork(), amaxes)
    assert got_exc is want_exc
    if want is not None:
        for g, w in zip(got, want, strict=True):
            assert_bit_identical(g, w)


@given(data=st.data(), n=st.integers(2, 3), dtype=st.sampled_from(DTYPES), channels=st.integers(2, 16))
def test_per_channel_is_elementwise_max_shared_by_all(data, n, dtype, channels):
    amaxes = [data.draw(amax_tensors(shape=(channels,), dtype=dtype)) for _ in range(n)]
    originals = [a.clone() for a in amaxes]
    mods = _modules(amaxes)
    _fork()(mods)
    expected = originals[0]
    for a in originals[1:]:
        expected = torch.maximum(expected, a)
    for m in mods:
        got = m.input_quantizer.amax
        assert got.shape == (channels,) and got.dtype == dtype and got.device.type == "cpu"
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    for m in mods[1:]:
        assert_bit_identical(m.input_quantizer.amax, mods[0].input_quantizer.amax)


@given(data=st.data(), dtype=st.sampled_from(DTYPES), channels=st.integers(2, 16), scalar_at=st.integers(0, 2))
def test_mixed_scalar_and_per_channel_broadcasts(data, dtype, channels, scalar_at):
    """A scalar amax in a group with per-channel ones: the max broadcasts (bounds every range)."""
    amaxes = [data.draw(amax_tensors(shape=(channels,), dtype=dtype)) for _ in range(3)]
    amaxes[scalar_at] = data.draw(amax_tensors(shape=data.draw(scalar_shapes), dtype=dtype))
    originals = [a.clone() for a in amaxes]
    mods = _modules(amaxes)
    _fork()(mods)
    expected = torch.full((channels,), -torch.inf, dtype=dtype)
    for a in originals:
        expected = torch.maximum(expected, a.reshape(-1).expand(channels) if a.numel() == 1 else a)
    for m in mods:
        torch.testing.assert_close(m.input_quantizer.amax, expected, rtol=0, atol=0, equal_nan=True)


@given(data=st.data(), c1=st.integers(2, 16), c2=st.integers(2, 16), dtype=st.sampled_from(DTYPES))
def test_incompatible_per_channel_shapes_raise_value_error_naming_modules(data, c1, c2, dtype):
    assume(c1 != c2)
    amaxes = [data.draw(amax_tensors(shape=(c1,), dtype=dtype)), data.draw(amax_tensors(shape=(c2,), dtype=dtype))]
    mods = _modules(amaxes)
    before = [m.input_quantizer.amax.clone() for m in mods]
    with pytest.raises(ValueError) as ei:
        _fork()(mods)
    msg = str(ei.value)
    assert f"modules[0] QuantLinear(in_features=48): input amax shape ({c1},)" in msg
    assert f"modules[1] QuantLinear(in_features=48): input amax shape ({c2},)" in msg
    for m, b in zip(mods, before, strict=True):  # nothing assigned before the error
        assert_bit_identical(m.input_quantizer.amax, b)
