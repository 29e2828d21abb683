"""Find MoE blocks structurally and count the tokens routed to each expert.

No architecture names: an MoE block is a module with an ``experts`` child that is either a
``ModuleList`` of per-expert MLPs (transformers < 5 layout) or a module holding 3-D expert
parameters (transformers >= 5 fused layout).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MoEBlock:
    name: str  # module holding ``experts`` (e.g. ``model.layers.1.mlp``)
    experts: nn.Module
    num_experts: int
    fused: bool

    @property
    def experts_name(self) -> str:
        return f"{self.name}.experts" if self.name else "experts"


def _fused_count(experts: nn.Module) -> int:
    dims = {p.shape[0] for n, p in experts.named_parameters(recurse=False) if p.dim() == 3}
    return dims.pop() if len(dims) == 1 else 0


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    blocks = []
    for name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module) or experts is module:
            continue
        if isinstance(experts, nn.ModuleList) and len(experts) > 0:
            blocks.append(MoEBlock(name, experts, len(experts), fused=False))
        elif (n := _fused_count(experts)) > 0:
            blocks.append(MoEBlock(name, experts, n, fused=True))
    return blocks


def _rows(t: torch.Tensor) -> int:
    return t.shape[:-1].numel() if t.dim() > 0 else 0


@contextmanager
def count_routed_tokens(blocks: list[MoEBlock]):
    """Yield {experts_name: LongTensor[num_experts]} counting tokens each expert receives.

    Per-expert layouts: rows reaching each expert's forward. Fused layouts: the integer
    top-k index tensor passed to the experts' forward (transformers >= 5 signature
    ``experts(hidden_states, top_k_index, top_k_weights)``).
    """
    counts = {b.experts_name: torch.zeros(b.num_experts, dtype=torch.long) for b in blocks}
    handles = []
    for b in blocks:
        c = counts[b.experts_name]
        if not b.fused:
            for i, e in enumerate(b.experts):
                def hook(_m, args, kwargs, i=i, c=c):
                    x = args[0] if args else next(iter(kwargs.values()))
                    c[i] += _rows(x)
                handles.append(e.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            def fhook(_m, args, kwargs, c=c, n=b.num_experts):
                idx = [a for a in list(args) + list(kwargs.values())
                       if isinstance(a, torch.Tensor) and not a.is_floating_point()]
                if not idx:
                    raise RuntimeError("fused experts called without an integer top-k index tensor")
                c += torch.bincount(idx[0].reshape(-1).cpu().long(), minlength=n)[:n]
            handles.append(b.experts.register_forward_pre_hook(fhook, with_kwargs=True))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def capture_inputs(model: nn.Module, module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The inputs ``module`` receives while ``model`` runs on ``ids``, as rows [tokens, features]."""
    got = []
    h = module.register_forward_hook(lambda m, a, o: got.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        h.remove()
    return torch.cat(got)
