"""Profile where the Triton NVFP4 fake-quant kernel and the CPU path disagree (run on a GPU).

    PYTHONPATH=. python benchmarks/gpu_nvfp4_kernel_vs_cpu.py [--out DIR]

For each dtype x input family x magnitude, runs
``kernels/quantization/gemm/fp4_kernel_hopper.py::fp4_fake_quant_block`` on CUDA and
``nvfp4_fake_quant_torch`` on CPU with the same input and amax, and classifies every
differing element:

* gs:       the global scale torch computed on CUDA (amax / 2688) differs from the CPU's
* zero:     the two outputs differ only in the sign of zero
* ulp1:     outputs one unit in the last place apart
* step:     the chosen E2M1 value differs (a whole FP4 step)
* other:    anything else

It also recomputes the CPU path with the CUDA global scale (``cpu@gs_cuda``) and with
``|x| * (1/scale)`` instead of ``|x| / scale`` (``recip``) to see which explains what.
Prints a table; writes the full rows as JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _utils.nvfp4 import gen  # noqa: E402


def bits(t):
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32).long()


def classify(a, b):
    """Counts of differing elements of a vs b (same dtype) by class."""
    ia, ib = bits(a), bits(b)
    diff = ia != ib
    n = int(diff.sum())
    zero = int((diff & (a == 0) & (b == 0)).sum())
    ulp1 = int((diff & ((ia - ib).abs() == 1)).sum())
    return {"diff": n, "zero": zero, "ulp1": ulp1, "other": n - zero - ulp1}


def cpu_variant(x, gs, recip=False, block=16):
    """The CPU path's arithmetic with a given global scale (and optionally reciprocal-multiply)."""
    x2 = x.reshape(-1, x.shape[-1])
    xb = x2.float().view(x2.shape[0], -1, block)
    gs6 = 6.0 * gs
    a = xb.abs()
    scale = torch.clamp(a.amax(-1, keepdim=True) / gs6, max=448.0).to(torch.float8_e4m3fn).float() * gs
    scale = torch.where(scale >= 1e-5, scale, 1.0)
    r = a * (1.0 / scale) if recip else a / scale
    inv = torch.where(r < 2, 2.0, torch.where(r < 4, 1.0, 0.5))
    q = torch.clamp(torch.round(r * inv) / inv, max=6.0) * scale
    y = torch.where(xb >= 0, q, -q).view_as(x2).to(x.dtype)
    return y.view_as(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from modelopt.torch.kernels.quantization.gemm import fp4_kernel_hopper
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for kind in ("normal", "heavy_tailed", "zero_blocks", "ties", "saturating"):
            for seed in range(6):
                x, amax = gen(kind, (512, 1024), dtype, seed)
                if kind == "normal" and seed >= 3:
                    x = (x.float() * 1e-3).to(dtype)  # small global scale
                    amax = x.float().abs().amax()
                gs_cpu = amax.float() / (6.0 * 448.0)
                gs_cuda = (amax.float().cuda() / (6.0 * 448.0)).cpu()
                yk = fp4_kernel_hopper.fp4_fake_quant_block(x.cuda(), amax.cuda()).cpu()
                yc = nvfp4_fake_quant_torch(x, amax)
                yc_gs = cpu_variant(x, gs_cuda)
                yc_gs_recip = cpu_variant(x, gs_cuda, recip=True)
                row = {
                    "dtype": str(dtype).split(".")[-1], "kind": kind, "seed": seed,
                    "gs_differs": bool(gs_cpu != gs_cuda), "n": x.numel(),
                    "kernel_vs_cpu": classify(yk, yc),
                    "kernel_vs_cpu@gs_cuda": classify(yk, yc_gs),
                    "kernel_vs_cpu@gs_cuda+recip": classify(yk, yc_gs_recip),
                }
                rows.append(row)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "nvfp4_kernel_vs_cpu.json").write_text(json.dumps(rows, indent=1))
    print(f"{'dtype':9} {'kind':13} {'seeds':>5} {'gs!=':>4} | {'k vs cpu: diff/zero/ulp1/other':>32} | "
          f"{'@gs_cuda':>24} | {'@gs_cuda+recip':>24}")
    agg = {}
    for r in rows:
        key = (r["dtype"], r["kind"])
        a = agg.setdefault(key, {"seeds": 0, "gs": 0, "n": 0, "c": {}, "g": {}, "gr": {}})
        a["seeds"] += 1
        a["gs"] += r["gs_differs"]
        a["n"] += r["n"]
        for k, src in (("c", "kernel_vs_cpu"), ("g", "kernel_vs_cpu@gs_cuda"), ("gr", "kernel_vs_cpu@gs_cuda+recip")):
            for kk, v in r[src].items():
                a[k][kk] = a[k].get(kk, 0) + v
    fmt = lambda c: "/".join(str(c[k]) for k in ("diff", "zero", "ulp1", "other"))  # noqa: E731
    for (dt, kind), a in agg.items():
        print(f"{dt:9} {kind:13} {a['seeds']:>5} {a['gs']:>4} | {fmt(a['c']):>32} | {fmt(a['g']):>24} | {fmt(a['gr']):>24}")
    print(f"elements per cell: {agg[next(iter(agg))]['n']}")


if __name__ == "__main__":
    main()
