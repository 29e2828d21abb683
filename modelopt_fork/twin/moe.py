"""Find MoE blocks structurally and count the tokens routed to each expert.

No architecture names: an MoE block is a module with an ``experts`` child that is either a
``ModuleList`` of per-expert MLPs (transformers < 5 layout) or a module holding 3-D expert
parameters (transformers >= 5 fused layout), directly or in its children (Aria's grouped GEMMs).
The expert count is the 3-D parameters' first dimension (the smaller one where two differ:
LongCat-Flash's gate_up rows include its identity "zero" experts). Experts inside attention
(JetMoE's mixture of attention heads) are no MoE block here.
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
    module: nn.Module | None = None  # the block itself (its router is a child)

    @property
    def experts_name(self) -> str:
        return f"{self.name}.experts" if self.name else "experts"


def _fused_count(experts: nn.Module) -> int:
    dims = {p.shape[0] for n, p in experts.named_parameters(recurse=False) if p.dim() == 3}
    if not dims:  # one level down: grouped-GEMM children (Aria's fc1 / fc2)
        dims = {p.shape[0] for c in experts.children() for n, p in c.named_parameters(recurse=False)
                if p.dim() == 3}
    return min(dims) if len(dims) in (1, 2) else 0


def _in_attention(name: str) -> bool:
    return any(part in ("self_attn", "self_attention", "attention", "attn") for part in name.split("."))


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    blocks = []
    for name, module in model.named_modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module) or experts is module or _in_attention(name):
            continue
        if isinstance(experts, nn.ModuleList) and len(experts) > 0:
            blocks.append(MoEBlock(name, experts, len(experts), fused=False, module=module))
        elif (n := _fused_count(experts)) > 0:
            blocks.append(MoEBlock(name, experts, n, fused=True, module=module))
    return blocks


_TOP_K_ATTRS = ("top_k", "num_experts_per_tok", "moe_topk", "top_k_experts", "moe_top_k")


def _top_k(*modules) -> int | None:
    for m in modules:
        for holder in (m, getattr(m, "config", None)):
            for a in _TOP_K_ATTRS:
                v = getattr(holder, a, None) if holder is not None else None
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
    return None


def _router(block: MoEBlock) -> nn.Module | None:
    """The block's router: a child other than the experts that is a Linear with one output per expert."""
    if block.module is None:
        return None
    for c in block.module.children():
        if c is not block.experts and isinstance(c, nn.Linear) and c.out_features == block.num_experts:
            return c
    return None


def _routed(out, n: int, k: int | None) -> torch.Tensor | None:
    """Tokens per expert from a router's output: sparse scores (zeros off the top-k), or logits and top-k."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    t = next((o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point() and o.shape[-1] == n), None)
    if t is None:
        return None
    t = t.detach().reshape(-1, n)
    chosen = t != 0
    if k is not None and chosen.sum(-1).max() > k:  # dense logits: the top-k are routed to
        chosen = torch.zeros_like(chosen).scatter_(1, t.topk(k, dim=-1).indices, True)
    return chosen.sum(0).cpu().long()


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
            # the router's choice, for experts that get no index tensor (Llama-4: inputs pre-scaled by
            # the router's sparse scores; Aria: router logits)
            pending: list[torch.Tensor] = []
            router, k = _router(b), _top_k(b.module, _router(b), b.experts)
            if router is not None:
                def rhook(_m, _args, out, pending=pending, n=b.num_experts, k=k):
                    pending[:] = [x] if (x := _routed(out, n, k)) is not None else []
                handles.append(router.register_forward_hook(rhook))

            def fhook(_m, args, kwargs, c=c, n=b.num_experts, pending=pending, name=b.experts_name):
                idx = [a for a in list(args) + list(kwargs.values())
                       if isinstance(a, torch.Tensor) and not a.is_floating_point()]
                if idx:
                    c += torch.bincount(idx[0].reshape(-1).cpu().long(), minlength=n)[:n]
                elif pending:
                    c += pending.pop()
                else:
                    raise RuntimeError(f"{name}: fused experts called without an integer top-k index tensor, "
                                       "and no router (a Linear with one output per expert) beside them")
                pending.clear()
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
