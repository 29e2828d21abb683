"""Wall time and peak accelerator memory of one phase, with the device synchronized around it."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def sync(device) -> None:
    if _is_cuda(device):
        torch.cuda.synchronize(device)


@contextmanager
def phase(device, into: dict, name: str):
    """Time the body into ``into[name + "_s"]``; on CUDA also ``_peak_gib`` (peak allocated during
    the phase, the counter reset at its start) and ``_start_gib`` (allocated when it started)."""
    cuda = _is_cuda(device)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        into[f"{name}_start_gib"] = torch.cuda.memory_allocated(device) / 2**30
    t0 = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        into[f"{name}_s"] = time.perf_counter() - t0
        if cuda:
            into[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def stats(values) -> dict:
    """min / median / max / n of the non-None ``values`` (empty dict when there are none)."""
    v = [x for x in values if x is not None]
    if not v:
        return {}
    return {"min": min(v), "median": statistics.median(v), "max": max(v), "n": len(v)}
