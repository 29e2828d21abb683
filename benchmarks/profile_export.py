"""Profile one NVFP4 export of a real-width MoE twin (where does export time go?).

    PYTHONPATH=<tree>:. python benchmarks/profile_export.py [--arch qwen3-30b-a3b] [--experts 128]

Builds the twin with real layer widths (bf16, on CUDA when available), calibrates with
NVFP4_DEFAULT_CFG, exports once untimed (warm-up) and once under cProfile, and prints the
total and the top functions by cumulative time. Run it once with the fork's tree and once
with a pristine upstream tree first on PYTHONPATH to compare.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen3-30b-a3b")
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt_fork.twin import build_twin
    from modelopt_fork.twin.build import calib_ids

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print("modelopt", modelopt.__file__, dev, flush=True)

    def calibrated():
        t = build_twin(args.arch, seed=0, device=dev, dtype=torch.bfloat16, widths="real",
                       num_experts=args.experts, layers=args.layers)
        ids = calib_ids(t.vocab_size).to(dev)
        mtq.quantize(t.model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(ids))
        return t.model

    with tempfile.TemporaryDirectory() as d:
        export_hf_checkpoint(calibrated(), export_dir=f"{d}/warm")
        model = calibrated()
        prof = cProfile.Profile()
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prof.enable()
        export_hf_checkpoint(model, export_dir=f"{d}/ckpt")
        if dev == "cuda":
            torch.cuda.synchronize()
        prof.disable()
        print(f"export {time.perf_counter() - t0:.3f} s", flush=True)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
