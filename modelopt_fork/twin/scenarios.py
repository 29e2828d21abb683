"""Calibration-coverage scenarios, driven by real routing where that is possible.

A scenario gives the calibration forward loop (``forward_loop(model)``, as
``mtq.quantize`` calls it, possibly several times) and may prepare the model before
quantization or adjust quantizers after it:

* ``full``          random tokens; every expert of every MoE block gets calibration tokens.
* ``dark-experts``  one token id repeated: every position has the same hidden state, so
                    only top-k experts per block are routed to; the others get no tokens.
* ``awq-cache-only`` the first pass (AWQ's cache pass, or max calibration's only pass) sees
                    random tokens, later passes (AWQ's search/clip passes) the repeated
                    token: experts get cache-pass tokens but no search-pass tokens.
* ``zero-channels`` intermediate channels 0..3 of every expert are dead (their gate and up
                    rows are zeroed before calibration), so the down projection's input
                    channels 0..3 stay exactly zero.
* ``per-channel-amax`` after calibration, every enabled expert input quantizer's amax is
                    replaced by the per-channel max |x| of its real inputs, then synced
                    over the experts of a layer as max calibration syncs them (as a
                    per-channel calibrator would leave it).
* ``tiny-amax``     after calibration, every expert input amax is scaled by 2**-120
                    (tiny but positive and normal in float32).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .build import Twin, calib_ids
from .moe import MoEBlock

SCENARIOS = ["full", "dark-experts", "awq-cache-only", "zero-channels", "per-channel-amax", "tiny-amax"]
DEAD_CHANNELS = 4
TINY_FACTOR = 2.0**-120


@dataclass
class Scenario:
    name: str
    forward_loop: Callable[[nn.Module], None]
    prepare: Callable[[Twin], None] = lambda twin: None
    after_calibration: Callable[[Twin], None] = lambda twin: None
    eval_ids: torch.Tensor | None = None


def repeated_ids(vocab: int, *, seed: int, seq: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    token = int(torch.randint(0, vocab, (1,), generator=g))
    return torch.full((1, seq), token, dtype=torch.long)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _loop(*batches: torch.Tensor):
    """A forward loop that runs batches[i] on its i-th call (the last one afterwards)."""
    calls = {"n": 0}

    def forward_loop(model):
        ids = batches[min(calls["n"], len(batches) - 1)].to(_device(model))
        calls["n"] += 1
        with torch.no_grad():
            model(ids)

    forward_loop.batches = batches
    return forward_loop


def make(name: str, twin: Twin, *, seed: int = 0) -> Scenario:
    vocab = twin.vocab_size
    rand, rep = calib_ids(vocab, seed=seed), repeated_ids(vocab, seed=seed)
    if name in ("full", "zero-channels", "per-channel-amax", "tiny-amax"):
        prep = {"zero-channels": _kill_channels}.get(name, lambda t: None)
        after = {"per-channel-amax": lambda t: _per_channel_amax(t, rand),
                 "tiny-amax": _tiny_amax}.get(name, lambda t: None)
        return Scenario(name, _loop(rand), prep, after, eval_ids=rand)
    if name == "dark-experts":
        return Scenario(name, _loop(rep), eval_ids=rand)
    if name == "awq-cache-only":
        return Scenario(name, _loop(rand, rep), eval_ids=rand)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


# -- model edits ---------------------------------------------------------------------------

def _kill_channels(twin: Twin) -> None:
    """Zero the gate and up rows of intermediate channels 0..DEAD_CHANNELS-1 of every expert."""
    with torch.no_grad():
        for b in twin.moe_blocks:
            if b.fused:
                gu = b.experts.gate_up_proj  # [E, 2I, H], gate rows then up rows
                inter = gu.shape[1] // 2
                gu[:, :DEAD_CHANNELS].zero_()
                gu[:, inter:inter + DEAD_CHANNELS].zero_()
            else:
                for e in b.experts:
                    _kill_expert_channels(e, b)


def _kill_expert_channels(expert: nn.Module, block: MoEBlock) -> None:
    linears = [m for m in expert.modules() if isinstance(m, nn.Linear)]
    # the projections feeding the activation map hidden -> intermediate; down maps back
    downs = [m for m in linears
             if all(n.out_features == m.in_features and n.in_features == m.out_features
                    for n in linears if n is not m)]
    if len(downs) != 1:
        raise ValueError(f"{block.name}: cannot tell the down projection of an expert apart")
    inter = downs[0].in_features
    for m in linears:
        if m.out_features == inter:
            m.weight[:DEAD_CHANNELS].zero_()
            if m.bias is not None:
                m.bias[:DEAD_CHANNELS].zero_()


# -- quantizer edits (after calibration) -----------------------------------------------------

def expert_input_quantizers(model: nn.Module):
    """(name, quantizer) of every enabled input quantizer inside an experts module."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    for name, m in model.named_modules():
        if (isinstance(m, TensorQuantizer) and ".experts" in name and "input_quantizer" in name
                and m.is_enabled and getattr(m, "amax", None) is not None):
            yield name, m


def set_amax(quantizer, value: torch.Tensor) -> None:
    """Replace a quantizer's amax, shape changes allowed (as a per-channel calibrator would leave it)."""
    if hasattr(quantizer, "_amax"):
        delattr(quantizer, "_amax")
    quantizer.amax = value


def _per_channel_amax(twin: Twin, ids: torch.Tensor) -> None:
    quantizers = dict(expert_input_quantizers(twin.model))
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, q in quantizers.items():
        def hook(_m, args, name=name):
            x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])
            if x.shape[0]:
                m = x.amax(dim=0)
                seen[name] = torch.maximum(seen[name], m) if name in seen else m
        handles.append(q.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            twin.model(ids.to(_device(twin.model)))
    finally:
        for h in handles:
            h.remove()
    for name, q in quantizers.items():
        if name in seen:  # a quantizer that saw no tokens keeps what calibration left
            set_amax(q, seen[name].to(q.amax.device))
    # a per-channel calibrator runs inside max calibration, which then gives the experts of a
    # layer one input amax (the element-wise max: layer_sync_moe_local_experts_amax), the scale
    # runtimes quantize the whole layer's inputs with; fused experts share one quantizer anyway.
    # The fork syncs every MoE layer (patch 0019); upstream only the blocks its plugins convert.
    from modelopt.torch.quantization import model_calib

    if hasattr(model_calib, "sync_moe_local_experts_amax"):
        model_calib.sync_moe_local_experts_amax(twin.model)
        return
    for module in twin.model.modules():
        if hasattr(module, "layer_sync_moe_local_experts_amax"):
            module.layer_sync_moe_local_experts_amax()


def _tiny_amax(twin: Twin) -> None:
    for _, q in expert_input_quantizers(twin.model):
        set_amax(q, q.amax * TINY_FACTOR)
