"""Dark experts: which input_scale should an expert get that saw no calibration tokens?

Usage: python benchmarks/dark_expert_policy.py [--seeds 0 1 2] [--act-scales 1 16] [--archs ...]
(transformers < 5: per-expert nn.Linear experts, each with its own input quantizer).

For each tiny twin, config, activation scale k and seed:

1. Build the twin (tests/_utils/tiny_moe.py) and multiply layer L's post-attention layernorm
   weight by k (k = 1: the random twin, MoE inputs of amax ~4; k = 16: amax ~60, closer to the
   MoE inputs of real LLMs). Keep a full-precision copy.
2. Calibrate (``mtq.quantize``) with expert E of layer L made dark: a forward hook on that
   layer's router sets its logit to -1e9, so no calibration token reaches it. Calibration uses
   ``moe_calib_experts_ratio = top_k / num_experts`` (no extra forcing), which keeps every
   expert's own input amax instead of syncing them to the layer max, so the siblings' values
   are their own.
3. Export, and load the checkpoint into the reference runtime (modelopt_fork.reference) with
   the runtimes' activation quantization (``convention="runtime"``: vLLM / TensorRT-LLM multiply
   by ``1 / input_scale``; with a tiny input_scale every block saturates and dequantizes to ~0,
   where ModelOpt's fake quant would instead fall back to block scale 1.0).
4. Evaluate on other tokens, with every token forced to expert E: the MoE inputs of layer L
   from the full-precision model go through expert E directly. Error of the reference
   runtime's expert E against the full-precision expert E: ``||y - y_fp|| / ||y_fp||``.

Policies (input_scale of expert E's gate/up pair and of its down_proj; its weights are the
same exported weights in every row):

* ``maxbound``: 0.47.0's ``TensorQuantizer._sanitize_export_amax`` for a zero amax: amax =
  maxbound (6), input_scale = 6 / 2688;
* ``floor``: the #1265 floor (fork patch 0002) for a zero scale with no positive entry:
  input_scale = float32 tiny (2**-126);
* ``sib_max`` / ``sib_median``: max / median of the same projection's input_scale over the
  layer's calibrated experts (``sib_max`` is what export's ``set_expert_quantizer_amax``
  writes: checked on every run, column ``export==sib_max``);
* ``oracle``: the dark expert's own activation amax on the evaluation tokens (not available
  at export; the best a single global scale can do);
* ``calibrated``: for scale, the mean error of the layer's calibrated experts on the same
  tokens with their own scales.

A second table sweeps expert E's input scales (gate/up and down together) over multiples of
the oracle: an NVFP4 global scale only sets the range of the FP8 block scales, so too small
clips at once while too large costs nothing until block scales fall into FP8's subnormals.

Prints a markdown table of the mean relative error over seeds (max over seeds in brackets).
Writes nothing else (temporary checkpoints are deleted).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LAYER, DARK = 1, 2
NVFP4_SCALE_DIV = 6.0 * 448.0
POLICIES = ["maxbound", "floor", "sib_max", "sib_median", "oracle"]
SWEEP = [1 / 8, 1 / 4, 1 / 2, 1, 4, 64, 2**10, 2**15, 2**20]  # input_scale / oracle


def _rel(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def _moe_inputs(model, moe, ids):
    from modelopt_fork.twin.moe import capture_inputs

    return capture_inputs(model, moe, ids)


def run_case(arch, cfg_name, k, seed):
    import modelopt.torch.quantization as mtq
    from _utils.tiny_moe import LAYOUTS, build, calib_ids
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt_fork.reference.runtime import ReferenceLinear, load_reference_model

    lay = LAYOUTS[arch]
    model = build(arch, seed=seed)
    with torch.no_grad():
        model.model.layers[LAYER].post_attention_layernorm.weight.mul_(k)
    fp = copy.deepcopy(model)
    moe = getattr(model.model.layers[LAYER], lay.moe_attr)
    n_experts, top_k = len(moe.experts), model.config.num_experts_per_tok

    def dark(mod, args, out):
        out = out.clone()
        out[..., DARK] = -1e9
        return out

    hook = moe.gate.register_forward_hook(dark)
    cfg = copy.deepcopy(getattr(mtq, cfg_name))
    alg = cfg.get("algorithm", "max")
    alg = {"method": alg} if isinstance(alg, str) else dict(alg)
    alg["moe_calib_experts_ratio"] = top_k / n_experts
    cfg["algorithm"] = alg
    calib = torch.cat([calib_ids(seed=seed * 10 + i) for i in range(2)])
    mtq.quantize(model, cfg, lambda m: m(calib))
    hook.remove()
    dark_q = getattr(moe.experts[DARK], lay.gate).input_quantizer
    assert dark_q.amax is None, f"expert {DARK} saw calibration tokens (amax {dark_q.amax})"

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_hf_checkpoint(model, export_dir=d)
        ref = load_reference_model(d, convention="runtime")
    ref_experts = getattr(ref.model.layers[LAYER], lay.moe_attr).experts
    fp_moe = getattr(fp.model.layers[LAYER], lay.moe_attr)

    ids = torch.cat([calib_ids(seed=1000 + seed * 10 + i) for i in range(4)])
    x = _moe_inputs(fp, fp_moe, ids)
    with torch.no_grad():
        fp_e = fp_moe.experts[DARK]
        h_fp = fp_e.act_fn(getattr(fp_e, lay.gate)(x)) * getattr(fp_e, lay.up)(x)
        y_fp = getattr(fp_e, lay.down)(h_fp)

    def scales(e):
        ex = ref_experts[e]
        return getattr(ex, lay.gate).input_scale, getattr(ex, lay.down).input_scale

    sib = [scales(e) for e in range(n_experts) if e != DARK]
    first = torch.stack([s[0] for s in sib])
    down = torch.stack([s[1] for s in sib])
    policy = {
        "maxbound": (torch.tensor(6.0) / NVFP4_SCALE_DIV, torch.tensor(6.0) / NVFP4_SCALE_DIV),
        "floor": (torch.tensor(torch.finfo(torch.float32).tiny),) * 2,
        "sib_max": (first.max(), down.max()),
        "sib_median": (first.median(), down.median()),
        "oracle": (x.abs().amax() / NVFP4_SCALE_DIV, h_fp.abs().amax() / NVFP4_SCALE_DIV),
    }
    exported = scales(DARK)
    export_is_sib_max = bool(torch.equal(exported[0], policy["sib_max"][0])
                             and torch.equal(exported[1], policy["sib_max"][1]))
    out = {}
    ex = ref_experts[DARK]

    def err(s_first, s_down):
        for proj, s in ((lay.gate, s_first), (lay.up, s_first), (lay.down, s_down)):
            mod = getattr(ex, proj)
            assert isinstance(mod, ReferenceLinear)
            mod.input_scale = s.float().reshape(())
        with torch.no_grad():
            return _rel(ex(x), y_fp)

    for name, (s_first, s_down) in policy.items():
        out[name] = err(s_first, s_down)
    out["sweep"] = {f: err(policy["oracle"][0] * f, policy["oracle"][1] * f) for f in SWEEP}
    with torch.no_grad():
        cal = [_rel(ref_experts[e](x), getattr(fp_moe.experts[e], lay.down)(
            fp_moe.experts[e].act_fn(getattr(fp_moe.experts[e], lay.gate)(x)) * getattr(fp_moe.experts[e], lay.up)(x)))
            for e in range(n_experts) if e != DARK]
    out["calibrated"] = sum(cal) / len(cal)
    out["export==sib_max"] = export_is_sib_max
    out["amax"] = (x.abs().amax().item(), h_fp.abs().amax().item(), (first.max() * NVFP4_SCALE_DIV).item(),
                   (down.max() * NVFP4_SCALE_DIV).item())
    return out


def main(argv=None) -> int:
    import transformers

    from _utils.tiny_moe import LAYOUTS, TRANSFORMERS_5

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=sorted(LAYOUTS))
    p.add_argument("--configs", nargs="+", default=["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"])
    p.add_argument("--act-scales", type=float, nargs="+", default=[1.0, 16.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    if TRANSFORMERS_5:
        print("transformers >= 5: fused experts share one input quantizer per projection, so no expert has an input "
              "scale of its own; run this with transformers < 5 (per-expert nn.Linear experts).")
        return 2
    print(f"{datetime.date.today()}, {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; layer {LAYER}, dark expert {DARK}, seeds {args.seeds}")
    cols = POLICIES + ["calibrated"]
    sweep_rows = []
    print("| arch | config | k | amax x / h (dark, eval) | sib max amax x / h | "
          + " | ".join(cols) + " | export==sib_max |")
    print("|---|---|---:|---|---|" + "---:|" * len(cols) + "---|")
    for arch in args.archs:
        for cfg in args.configs:
            for k in args.act_scales:
                rows = [run_case(arch, cfg, k, s) for s in args.seeds]
                cells = []
                for c in cols:
                    v = [r[c] for r in rows]
                    cells.append(f"{sum(v) / len(v):.4f} ({max(v):.3f})")
                am = rows[0]["amax"]
                print(f"| {arch} | {cfg} | {k:g} | {am[0]:.3g} / {am[1]:.3g} | {am[2]:.3g} / {am[3]:.3g} | "
                      + " | ".join(cells) + f" | {all(r['export==sib_max'] for r in rows)} |", flush=True)
                sweep = [sum(r["sweep"][f] for r in rows) / len(rows) for f in SWEEP]
                sweep_rows.append(f"| {arch} | {cfg} | {k:g} | " + " | ".join(f"{v:.4f}" for v in sweep) + " |")
    print("\nMean relative error of the dark expert with input_scale = oracle x factor:\n")
    labels = [f"x{f:g}" if 1 <= f < 2**10 else f"x2^{f.bit_length() - 1}" if f >= 1 else f"x1/{round(1 / f)}"
              for f in SWEEP]
    print("| arch | config | k | " + " | ".join(labels) + " |")
    print("|---|---|---:|" + "---:|" * len(SWEEP))
    print("\n".join(sweep_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
