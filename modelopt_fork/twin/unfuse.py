"""Decompose transformers 5 fused experts into per-expert ``nn.Linear`` modules.

Transformers 5 keeps a MoE layer's experts as two 3-D parameters (``gate_up_proj``
``[E, 2I, H]``, ``down_proj`` ``[E, H, I]``) in one module. Users who want per-expert
algorithms (AWQ per expert, as upstream PRs #1264/#1265 were reported on a Gemma-4 26B run)
replace that module with a ``ModuleList`` of per-expert gate/up/down linears: the layout
transformers 4.57 has for Qwen3-MoE, Mixtral and DeepSeek. :func:`decompose_fused_experts`
does that replacement: the same weights, the same routing loop, the same output up to float
rounding (gate and up in two matmuls instead of one; measured max |delta logit| <= 3.1e-7 on the
bundled twins), the per-expert names transformers 4.57 gives (Mixtral: w1/w3/w2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..series.errors import ForkError
from .moe import find_moe_blocks

# The per-expert names transformers 4.57 gives (gate, up, down); the default is Qwen/DeepSeek's.
NAMES = {"mixtral": ("w1", "w3", "w2")}
DEFAULT_NAMES = ("gate_proj", "up_proj", "down_proj")


class ExpertMLP(nn.Module):
    """One expert: ``down(act_fn(gate(x)) * up(x))``, its linears named ``names``."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn,
                 names: tuple[str, str, str] = DEFAULT_NAMES):
        super().__init__()
        self._names = names
        for name, w in zip(names, (gate, up, down), strict=True):
            setattr(self, name, _linear(w))
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self._names)
        return down(self.act_fn(gate(x)) * up(x))


def _linear(weight: torch.Tensor) -> nn.Linear:
    out_features, in_features = weight.shape
    lin = nn.Linear(in_features, out_features, bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


class PerExpertLinears(nn.ModuleList):
    """Per-expert MLPs called like transformers 5 fused experts:
    ``experts(hidden_states, top_k_index, top_k_weights)``, with transformers' eager routing loop
    (the same token order per expert, so the same sums)."""

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=len(self)).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            pos, token = torch.where(mask[e])
            y = self[e](hidden_states[token]) * top_k_weights[token, pos, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


def decompose_fused_experts(model: nn.Module) -> list[str]:
    """Replace every fused gated-experts module of ``model`` by :class:`PerExpertLinears`.

    Returns the names of the replaced modules. Raises :class:`ForkError` naming the module for
    a fused layout it cannot decompose exactly (no ``gate_up_proj``/``down_proj`` pair, biases,
    or no ``act_fn``). Call it before ``mtq.quantize``.
    """
    done = []
    config = getattr(model, "config", None)
    names = NAMES.get(getattr(config, "model_type", None), DEFAULT_NAMES)
    for block in find_moe_blocks(model):
        if not block.fused:
            continue
        ex = block.experts
        gate_up, down = getattr(ex, "gate_up_proj", None), getattr(ex, "down_proj", None)
        act = getattr(ex, "act_fn", None)
        params = {n for n, _ in ex.named_parameters(recurse=False)}
        if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and act is not None) \
                or params != {"gate_up_proj", "down_proj"}:
            raise ForkError(f"{block.experts_name} ({type(ex).__name__}): cannot decompose fused experts with "
                            f"parameters {sorted(params)} (need exactly gate_up_proj, down_proj and an act_fn)")
        inter = gate_up.shape[1] // 2
        experts = PerExpertLinears(
            ExpertMLP(gate_up[e, :inter], gate_up[e, inter:], down[e], act, names) for e in range(gate_up.shape[0]))
        parent = model.get_submodule(block.name) if block.name else model
        parent.experts = experts
        done.append(block.experts_name)
    return done


def decompose_twin_experts(twin) -> list[str]:
    """:func:`decompose_fused_experts` on a twin's model, keeping ``twin.moe_blocks`` in step.

    Raises :class:`ForkError` when the twin has no fused experts (nothing would be decomposed).
    """
    done = decompose_fused_experts(twin.model)
    if not done:
        raise ForkError(f"{type(twin.model).__name__}: no fused experts to decompose")
    twin.moe_blocks = find_moe_blocks(twin.model)
    return done
