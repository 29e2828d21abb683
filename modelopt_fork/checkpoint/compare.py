"""Are two exported checkpoints the same, tensor for tensor?

Identical means: the same tensor names, and for each the same dtype, the same shape and the
same bytes (bitwise, so ``-0.0`` vs ``+0.0`` and NaN payloads count as differences); and equal
``hf_quant_config.json`` objects. The first differing tensor (in name order) is reported with
how many elements differ and the largest absolute difference of their values (for packed
NVFP4 ``uint8`` weights that is a difference of bytes, not of FP4 values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .load import load_checkpoint


@dataclass
class TensorDiff:
    name: str
    reason: str  # "dtype", "shape" or "values"
    detail: str
    differing: int = 0  # elements that differ (values only)
    max_abs_diff: float | None = None


@dataclass
class CheckpointDiff:
    reference: str
    other: str
    tensors: int  # tensors in the reference
    only_in_reference: list[str] = field(default_factory=list)
    only_in_other: list[str] = field(default_factory=list)
    differing: list[TensorDiff] = field(default_factory=list)
    quant_config_equal: bool = True
    quant_config_detail: str = ""

    @property
    def identical(self) -> bool:
        return not (self.only_in_reference or self.only_in_other or self.differing) and self.quant_config_equal

    @property
    def first(self) -> TensorDiff | None:
        return self.differing[0] if self.differing else None

    def summary(self) -> str:
        if self.identical:
            return f"identical ({self.tensors} tensors, hf_quant_config.json equal)"
        parts = []
        if self.only_in_reference:
            parts.append(f"{len(self.only_in_reference)} missing (e.g. {self.only_in_reference[0]})")
        if self.only_in_other:
            parts.append(f"{len(self.only_in_other)} extra (e.g. {self.only_in_other[0]})")
        if self.differing:
            d = self.differing[0]
            parts.append(f"{len(self.differing)} differ, first {d.name}: {d.detail}")
        if not self.quant_config_equal:
            parts.append(f"hf_quant_config.json differs: {self.quant_config_detail}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identical"] = self.identical
        d["summary"] = self.summary()
        return d


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _numeric(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(torch.float64)


def compare_tensors(name: str, a: torch.Tensor, b: torch.Tensor) -> TensorDiff | None:
    """None when ``a`` and ``b`` are the same dtype, shape and bytes."""
    if a.dtype != b.dtype:
        return TensorDiff(name, "dtype", f"dtype {a.dtype} vs {b.dtype}")
    if a.shape != b.shape:
        return TensorDiff(name, "shape", f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
    if torch.equal(_bytes(a), _bytes(b)):
        return None
    item = a.element_size()
    if item in (1, 2, 4, 8):
        ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[item]
        differ = a.detach().contiguous().reshape(-1).view(ints) != b.detach().contiguous().reshape(-1).view(ints)
    else:  # pragma: no cover - no such dtype in a checkpoint of ours
        differ = torch.ones(a.numel(), dtype=torch.bool)
    n = int(differ.sum())
    try:
        diff = (_numeric(a)[differ] - _numeric(b)[differ]).abs()
        mad = float(diff.nan_to_num(nan=float("inf")).max()) if n else 0.0
    except (RuntimeError, TypeError):  # a dtype without a float64 conversion
        mad = None
    return TensorDiff(name, "values", f"{n} of {a.numel()} elements differ, max |diff| {mad}", n, mad)


def _dict_diff(a, b, path: str = "") -> str:
    """The first place where two JSON objects differ, as ``path: a vs b``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return (
                    f"{path}/{k}: {'absent' if k not in a else repr(a[k])[:80]} vs "
                    f"{'absent' if k not in b else repr(b[k])[:80]}"
                )
            d = _dict_diff(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return ""
    if a != b:
        return f"{path or '/'}: {repr(a)[:80]} vs {repr(b)[:80]}"
    return ""


def compare_checkpoints(reference: str | Path, other: str | Path) -> CheckpointDiff:
    """Compare every tensor of two exported checkpoint directories (read one pair at a time)."""
    ra, rb = load_checkpoint(reference), load_checkpoint(other)
    names_a, names_b = set(ra.tensors), set(rb.tensors)
    out = CheckpointDiff(
        str(reference),
        str(other),
        len(names_a),
        only_in_reference=sorted(names_a - names_b),
        only_in_other=sorted(names_b - names_a),
    )
    for name in sorted(names_a & names_b):
        d = compare_tensors(name, ra.load(name), rb.load(name))
        if d is not None:
            out.differing.append(d)
    qa, qb = ra.hf_quant_config, rb.hf_quant_config
    out.quant_config_equal = qa == qb
    if not out.quant_config_equal:
        out.quant_config_detail = (
            _dict_diff(qa or {}, qb or {})
            if (qa is not None and qb is not None)
            else f"present: {qa is not None} vs {qb is not None}"
        )
    return out
