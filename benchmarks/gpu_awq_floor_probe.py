"""Where does a CPU copy of a cuda-calibrated AWQ model compute differently from the cuda model?

    python3 benchmarks/gpu_awq_floor_probe.py [ARCH] [CFG] [SCENARIO]

The vLLM stage's per-cell noise floor (fake-quantized model on cuda vs its CPU copy) is float32
rounding (2e-7) for NVFP4 cells but 0.003-0.04 mean |delta log-prob| for AWQ cells of Mixtral,
DeepSeek and Gemma-4 (docs/vllm-stage.md). This calibrates one cell on cuda as the stage does,
copies the model to the CPU, and prints (1) every weight whose fake quantization differs between
the two, with its amax against the weight's own abs max and the largest FP8 block scale, (2) the
first modules whose outputs differ on the same input.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modelopt.torch.quantization as mtq  # noqa: E402
from modelopt.torch.quantization.nn import TensorQuantizer  # noqa: E402
from modelopt_fork.twin import build_twin  # noqa: E402
from modelopt_fork.twin.build import calib_ids  # noqa: E402
from modelopt_fork.twin.scenarios import make  # noqa: E402


def weight_pairs(model):
    """(name, weight, quantizer) for every enabled weight quantizer, per expert for 3-D weights."""
    for n, m in model.named_modules():
        for p, w in m.named_parameters(recurse=False):
            q = getattr(m, f"{p}_quantizer", None) if p == "weight" else getattr(m, f"{p}_weight_quantizer", None)
            if q is None:
                q = getattr(m, f"{p}_weight_quantizers", None)
            if isinstance(q, TensorQuantizer) and q.is_enabled:
                yield f"{n}.{p}", w, q
            elif isinstance(q, torch.nn.ModuleList):
                for e, qe in enumerate(q):
                    if qe.is_enabled:
                        yield f"{n}.{p}[{e}]", w[e], qe


def outputs(model, ids):
    got = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: got.append((n, o[0] if isinstance(o, tuple) else o)))
             for n, m in model.named_modules() if n]
    with torch.no_grad():
        model(ids.to(next(model.parameters()).device))
    for h in hooks:
        h.remove()
    return [(n, o.detach().float().cpu()) for n, o in got if isinstance(o, torch.Tensor)]


def main():
    arch, cfg, scen_name = (sys.argv[1:] + ["mixtral-8x7b", "NVFP4_AWQ_LITE_CFG", "full"][len(sys.argv[1:]):])[:3]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    twin = build_twin(arch, seed=0, device=dev, dtype=torch.float32, widths="runtime")
    scen = make(scen_name, twin, seed=0)
    scen.prepare(twin)
    mtq.quantize(twin.model, getattr(mtq, cfg), scen.forward_loop)
    scen.after_calibration(twin)
    cpu = copy.deepcopy(twin.model).cpu()
    print(f"{arch} {cfg} {scen_name} on {dev}: weights whose fake quant differs (cuda vs CPU copy)")
    n_diff = 0
    with torch.no_grad():
        for (name, w, q), (_, wc, qc) in zip(weight_pairs(twin.model), weight_pairs(cpu), strict=True):
            a, b = q(w).cpu(), qc(wc)
            d = int((a != b).sum())
            if d:
                n_diff += 1
                if n_diff <= 12:
                    amax = float(q.amax.max()) if q.amax is not None else float("nan")
                    gs = amax / (6 * 448)
                    bmax = float(w.detach().float().abs().reshape(-1, 16).amax(-1).max()) / 6 / gs if gs else 0
                    print(f"  {name}: {d} of {a.numel()} differ; amax {amax:.6g} vs |w| max "
                          f"{float(w.abs().max()):.6g}; largest block scale {bmax:.4g} (E4M3 max 448); "
                          f"amax shape {tuple(q.amax.shape) if q.amax is not None else None}")
    print(f"  {n_diff} weight(s) differ")
    ids = calib_ids(twin.vocab_size, seed=1000, batch=1, seq=16)
    oa, ob = outputs(twin.model, ids), outputs(cpu, ids)
    print("first modules whose output differs (max |delta| / max |out|):")
    shown = 0
    for (n, a), (_, b) in zip(oa, ob, strict=True):
        if a.shape == b.shape and not torch.equal(a, b):
            rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
            if rel > 1e-5:
                print(f"  {n}: {rel:.3g}")
                shown += 1
                if shown >= 8:
                    break


if __name__ == "__main__":
    main()
