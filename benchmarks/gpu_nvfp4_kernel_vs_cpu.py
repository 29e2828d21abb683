"""Profile where the Triton NVFP4 fake-quant kernel and the CPU path disagree (run on a GPU).

    PYTHONPATH=. python benchmarks/gpu_nvfp4_kernel_vs_cpu.py [--out DIR]

For each dtype x input family (6 seeds of 512x1024 each), runs
``kernels/quantization/gemm/fp4_kernel_hopper.py::fp4_fake_quant_block`` on CUDA and
``nvfp4_fake_quant_torch`` on CPU with the same input and amax. Columns, summed over seeds:

* gs!=       seeds whose global scale amax/2688 differs between CUDA and CPU (one ulp)
* diff       differing elements, CPU path with its own global scale
* ulp1       of those, outputs one unit in the last place apart
* diff@gs    differing elements, CPU path given the CUDA global scale
* unexpl     of those, elements NOT near a division rounding boundary (must be 0)
* near       elements near such a boundary (an upper bound on what may differ)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _utils.nvfp4 import gen, mismatch_profile  # noqa: E402


def _ints(t):
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32).long()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from modelopt.torch.kernels.quantization.gemm.fp4_kernel_hopper import fp4_fake_quant_block
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    rows, agg = [], {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for kind in ("normal", "heavy_tailed", "zero_blocks", "ties", "saturating"):
            for seed in range(6):
                x, amax = gen(kind, (512, 1024), dtype, seed)
                gs_cuda = amax.float().cuda() / (6.0 * 448.0)
                yk = fp4_fake_quant_block(x.cuda(), amax.float().cuda()).cpu()
                yc = nvfp4_fake_quant_torch(x, amax)
                yg = nvfp4_fake_quant_torch(x, amax, global_scale=gs_cuda.cpu())
                d = _ints(yk) != _ints(yc)
                prof = mismatch_profile(yk, yg, x, gs_cuda)
                row = {"dtype": str(dtype).split(".")[-1], "kind": kind, "seed": seed, "n": x.numel(),
                       "gs_differs": bool((gs_cuda.cpu() != amax.float() / 2688.0).item()),
                       "diff": int(d.sum()), "ulp1": int((d & ((_ints(yk) - _ints(yc)).abs() == 1)).sum()),
                       "diff_gs": prof["diff"], "unexplained": prof["unexplained"], "near": prof["near_boundary"]}
                rows.append(row)
                a = agg.setdefault((row["dtype"], kind), {})
                for k in ("n", "gs_differs", "diff", "ulp1", "diff_gs", "unexplained", "near"):
                    a[k] = a.get(k, 0) + row[k]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "nvfp4_kernel_vs_cpu.json").write_text(json.dumps(rows, indent=1))
    cols = ("gs_differs", "diff", "ulp1", "diff_gs", "unexplained", "near")
    heads = ("gs!=", "diff", "ulp1", "diff@gs", "unexpl", "near")
    print(f"{'dtype':9} {'kind':13} " + " ".join(f"{c:>11}" for c in heads))
    for (dt, kind), a in agg.items():
        print(f"{dt:9} {kind:13} " + " ".join(f"{a[c]:>11}" for c in cols))
    print(f"elements per row: {agg[next(iter(agg))]['n']} (6 seeds x 512 x 1024)")
    print(f"max per-tensor diff@gs fraction: {max(r['diff_gs'] / r['n'] for r in rows):.2e}")


if __name__ == "__main__":
    main()
