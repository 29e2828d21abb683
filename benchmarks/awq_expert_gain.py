"""Does AWQ help the experts? NVFP4_DEFAULT vs NVFP4_AWQ_LITE vs NVFP4_AWQ_FULL on MoE twins with
activation outliers, per expert layout. Prints a markdown table.

Random twins have no outliers, so a few hidden channels of the norm that feeds the experts are
scaled up (``--outlier-channels`` channels by ``--outlier-scale``), as real checkpoints have them.
Per cell:

* ``block rel err``: each MoE unit (the norm feeding the experts, then the block: router and
  experts; Gemma-4: its ``pre_feedforward_layernorm_2`` and experts, routed as the unquantized
  router routes) evaluated on the hidden states the unquantized model gives it on held-out tokens,
  ``||y_q - y|| / ||y||``, mean over the MoE layers. The norm is included because AWQ folds its
  scales into it.
* ``KL``: full-vocab KL(unquantized || quantized) of the logits, mean over held-out tokens.
* ``smoothed``: experts whose gate, up and down weights AWQ rescaled (relative change > 1e-4
  against NVFP4_DEFAULT's calibrated model, which keeps them), out of all experts. ``up``
  includes the fold of ``down``'s scale into it.

Layouts: ``fused`` (transformers 5's 3-D experts), ``per-expert`` (per-expert ``nn.Linear``:
transformers 4.57's layout, or transformers 5's decomposed by :mod:`modelopt_fork.twin.unfuse`).

    python benchmarks/awq_expert_gain.py [--archs A ...] [--layouts fused per-expert]
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings

import torch
import torch.nn.functional as F

CFGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG", "NVFP4_AWQ_FULL_CFG"]


def _is_gemma4(holder) -> bool:
    return hasattr(holder, "router") and hasattr(holder, "pre_feedforward_layernorm_2")


def _units(model, blocks):
    """(block, norm, evaluate(h, routing)) per MoE block. Gemma-4's experts sit beside the dense
    MLP and are routed from the residual stream: ``routing`` is the unquantized router's."""
    units = []
    for b in blocks:
        holder = model.get_submodule(b.name)
        if _is_gemma4(holder):
            norm = holder.pre_feedforward_layernorm_2

            def ev(h, routing, holder=holder, norm=norm):
                return holder.experts(norm(h.reshape(-1, h.shape[-1])), *routing)
        else:
            norm = model.get_submodule(b.name.rpartition(".")[0]).post_attention_layernorm

            def ev(h, routing, holder=holder, norm=norm):
                out = holder(norm(h))
                return out[0] if isinstance(out, tuple) else out
        units.append((b, norm, ev))
    return units


def _routing(model, block, h):
    holder = model.get_submodule(block.name)
    if not _is_gemma4(holder):
        return None
    _, weights, index = holder.router(h.reshape(-1, h.shape[-1]))
    return index, weights


def _record(model, units, ids):
    """Hidden states entering each unit's norm (the residual stream) on ``ids``."""
    seen, hooks = {}, []
    for b, norm, _ in units:
        hooks.append(norm.register_forward_pre_hook(lambda _m, a, n=b.name: seen.setdefault(n, a[0].detach())))
    with torch.no_grad():
        logits = model(ids).logits.float()
    for h in hooks:
        h.remove()
    return logits, seen


def _expert_weights(block):
    """(gate, up, down) weights of each expert."""
    ex = block.experts
    if block.fused:
        inter = ex.down_proj.shape[-1]
        return [tuple(w.detach().clone() for w in (ex.gate_up_proj[e, :inter], ex.gate_up_proj[e, inter:],
                                                   ex.down_proj[e])) for e in range(ex.down_proj.shape[0])]
    out = []
    for e in ex:
        kids = dict(e.named_children())
        linears = [kids.get(a, kids.get(b)) for a, b in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))]
        out.append(tuple(m.weight.detach().clone() for m in linears))
    return out


def _smoothed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """AWQ rescaled the weight (not just rounded it: un-smoothing restores w * s / s to ~1 ulp)."""
    return bool(((a - b).abs().amax() / b.abs().amax()) > 1e-4)


def run(arch, layout, args):
    import modelopt.torch.quantization as mtq
    from modelopt_fork.twin import build_twin
    from modelopt_fork.twin.moe import find_moe_blocks
    from modelopt_fork.twin.unfuse import decompose_fused_experts

    twin = build_twin(arch, seed=args.seed)
    fused = any(b.fused for b in twin.moe_blocks)
    if layout == "per-expert" and fused:
        decompose_fused_experts(twin.model)
    elif layout == "fused" and not fused:
        return None
    blocks = find_moe_blocks(twin.model)
    g = torch.Generator().manual_seed(args.seed)
    calib = torch.randint(0, twin.vocab_size, (args.batches, args.seq), generator=g)
    held = torch.randint(0, twin.vocab_size, (4, args.seq), generator=g)
    units = _units(twin.model, blocks)
    for _, norm, _ in units:  # outliers: a few channels of the norm feeding the experts, scaled up
        ch = torch.randperm(norm.weight.numel(), generator=g)[: args.outlier_channels]
        with torch.no_grad():
            norm.weight[ch] *= args.outlier_scale
    ref_logits, hidden = _record(twin.model, units, held)
    with torch.no_grad():
        routing = {b.name: _routing(twin.model, b, hidden[b.name]) for b in blocks}
        ref_out = {b.name: ev(hidden[b.name], routing[b.name]) for b, _, ev in units}

    rows, default_w = [], None
    for cfg in CFGS:
        model = copy.deepcopy(twin.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mtq.quantize(model, getattr(mtq, cfg), lambda m: [m(calib[i:i + 1]) for i in range(len(calib))])
        notes = sorted({str(w.message).split(":")[0][:70] for w in caught
                        if "AWQ smoothing not applied" in str(w.message)})
        qblocks = find_moe_blocks(model)
        qunits = _units(model, qblocks)
        with torch.no_grad():
            logits = model(held).logits.float()
            kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1), log_target=True,
                          reduction="none").sum(-1).mean().item()
            errs = []
            for b, _, ev in qunits:
                y = ev(hidden[b.name], routing[b.name])
                errs.append(((y - ref_out[b.name]).norm() / ref_out[b.name].norm()).item())
        weights = [w for b in qblocks for w in _expert_weights(b)]
        if default_w is None:
            default_w, smoothed = weights, "-"
        else:
            n = [sum(_smoothed(a[i], b[i]) for a, b in zip(weights, default_w, strict=True)) for i in range(3)]
            smoothed = f"gate {n[0]}, up {n[1]}, down {n[2]} of {len(weights)}"
        rows.append((cfg.replace("_CFG", "").replace("NVFP4_", ""), sum(errs) / len(errs), kl, smoothed,
                     "; ".join(notes)))
    return rows


def main(argv=None) -> int:
    import transformers

    from modelopt_fork.matrix.axes import archs as bundled

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="*")
    p.add_argument("--layouts", nargs="*", default=["fused", "per-expert"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--outlier-channels", type=int, default=4)
    p.add_argument("--outlier-scale", type=float, default=30.0)
    args = p.parse_args(argv)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, seed {args.seed}, "
          f"{args.outlier_channels} outlier channels x{args.outlier_scale:g}, calib {args.batches}x{args.seq}")
    print("| arch | layout | config | block rel err | KL | smoothed experts | not smoothed (warning) |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs or bundled():
        for layout in args.layouts:
            rows = run(arch, layout, args)
            for cfg, err, kl, sm, notes in rows or []:
                print(f"| {arch} | {layout} | {cfg} | {err:.4f} | {kl:.4f} | {sm} | {notes} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
