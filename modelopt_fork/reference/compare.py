"""Logits of an exported checkpoint through the reference runtime vs the fake-quantized and original models."""

from __future__ import annotations

import torch
from torch import nn

from .runtime import load_reference_model

__all__ = ["compare", "logits", "agreement"]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """float32 CPU logits of ``model`` on token ids ``ids`` (moved to the model's device)."""
    device = next(iter(model.parameters()), next(iter(model.buffers()), torch.empty(0))).device
    with torch.no_grad():
        return model(ids.to(device)).logits.float().cpu()


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """max |a - b|, max |b|, and cosine similarity of the flattened tensors."""
    a, b = a.float().flatten(), b.float().flatten()
    return {
        "max_abs_err": (a - b).abs().max().item(),
        "max_abs_ref": b.abs().max().item(),
        "cosine": nn.functional.cosine_similarity(a, b, dim=0).item(),
        "bit_exact": torch.equal(a, b),
    }


def compare(ckpt_dir, model: nn.Module | torch.Tensor, ids: torch.Tensor,
            original: nn.Module | torch.Tensor | None = None, *, device: str = "cpu", convention: str = "modelopt"
            ) -> dict:
    """Run ``ckpt_dir`` through the reference runtime and compare its logits on ``ids``.

    ``model``: the fake-quantized model that was exported, or its logits on ``ids`` (the target:
    same numerics, so agreement is exact or at the level of float32 rounding, see
    tests/reference/test_runtime.py). ``export_hf_checkpoint`` packs the model's weights in
    place, so after export pass the logits taken before it (or a deep copy of the model).
    ``original``: the unquantized model or its logits on ``ids`` (optional). ``device``: where
    the reference runs.

    Returns ``{"vs_fake": agreement, "vs_original": agreement | None, "fake_vs_original": ...}``
    with ``agreement`` = ``{"max_abs_err", "max_abs_ref", "cosine", "bit_exact"}``.
    """
    fake = model.float().cpu() if isinstance(model, torch.Tensor) else logits(model, ids)
    ref = logits(load_reference_model(ckpt_dir, device=device, convention=convention), ids)
    out = {"vs_fake": agreement(ref, fake), "vs_original": None, "fake_vs_original": None}
    if original is not None:
        orig = original.float().cpu() if isinstance(original, torch.Tensor) else logits(original, ids)
        out["vs_original"] = agreement(ref, orig)
        out["fake_vs_original"] = agreement(fake, orig)
    return out
