"""Hypothesis strategies for amax-like tensors and a bit-exact comparison."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Magnitudes from float32 denormals to huge, plus the special values.
SPECIAL = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, 1e-44, 1e-42, 1e-38, 6.0, 448.0, 3e38]
finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
positive_floats = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, width=32)
any_floats = st.one_of(finite_floats, positive_floats, st.sampled_from(SPECIAL))


def tensor_of(values, dtype, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).to(dtype).reshape(shape)


@st.composite
def amax_tensors(draw, shape=None, dtype=None, elements=any_floats):
    dtype = dtype or draw(st.sampled_from(DTYPES))
    if shape is None:
        shape = draw(st.sampled_from([(), (1,), (draw(st.integers(2, 16)),)]))
    n = 1
    for d in shape:
        n *= d
    values = draw(st.lists(elements, min_size=n, max_size=n))
    return tensor_of(values, dtype, shape)


def bits(t: torch.Tensor):
    """(shape, dtype, raw bytes): equality means bit-identical, NaN payloads and -0.0 included."""
    t = t.detach().contiguous()
    return tuple(t.shape), t.dtype, bytes(t.reshape(-1).view(torch.uint8).tolist())


def assert_bit_identical(a: torch.Tensor, b: torch.Tensor):
    assert bits(a) == bits(b), f"not bit-identical:\n  {a!r}\n  {b!r}"
