"""Wall time, peak accelerator memory and garbage-collector time of one phase, device synchronized."""

from __future__ import annotations

import gc
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
def gc_time(into: dict, name: str):
    """Record the time Python's garbage collector ran during the body (``_gc_s``) and how many
    full (generation 2) collections there were (``_gc_full``): a full collection scans every live
    object of the process, so one landing inside a timed phase is a step of its own."""
    state = {"t0": 0.0, "total": 0.0, "full": 0}

    def cb(event, info):
        if event == "start":
            state["t0"] = time.perf_counter()
        else:
            state["total"] += time.perf_counter() - state["t0"]
            state["full"] += info.get("generation") == 2

    gc.callbacks.append(cb)
    try:
        yield
    finally:
        gc.callbacks.remove(cb)
        into[f"{name}_gc_s"] = state["total"]
        into[f"{name}_gc_full"] = state["full"]


@contextmanager
def phase(device, into: dict, name: str):
    """Time the body into ``into[name + "_s"]``; on CUDA also ``_peak_gib`` (peak allocated during
    the phase, the counter reset at its start) and ``_start_gib`` (allocated when it started); the
    garbage collector's share in ``_gc_s`` / ``_gc_full`` (see :func:`gc_time`). A full collection
    runs first, outside the timing, so every phase starts from the same collector state."""
    cuda = _is_cuda(device)
    gc.collect()
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        into[f"{name}_start_gib"] = torch.cuda.memory_allocated(device) / 2**30
    t0 = time.perf_counter()
    try:
        with gc_time(into, name):
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
