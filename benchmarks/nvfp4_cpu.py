"""CPU throughput of the NVFP4 fake quant (patch 0003). Prints a table; not a test.

    python benchmarks/nvfp4_cpu.py [--rows 2048 --cols 4096 --repeat 10]

MB/s counts input bytes (a 2048x4096 bf16 tensor is 16.8 MB). "naive" is a plain
unchunked torch composition of the same arithmetic, for reference.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def naive(x, amax):
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import _global_scale, _qdq_rows

    return _qdq_rows(x, _global_scale(amax), 16)


def timed(fn, repeat):
    fn()  # warm-up (compiles on first use)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    from modelopt.torch.quantization.nvfp4_fake_quant_torch import nvfp4_fake_quant_torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'dtype':9} {'path':9} {'ms':>8} {'MB/s':>8}")
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        x = torch.randn(args.rows, args.cols).to(dtype)
        amax = x.float().abs().amax()
        mb = x.numel() * x.element_size() / 1e6
        ref = nvfp4_fake_quant_torch(x, amax, compile=False)
        for name, fn in [
            ("naive", lambda x=x, amax=amax: naive(x, amax)),
            ("eager", lambda x=x, amax=amax: nvfp4_fake_quant_torch(x, amax, compile=False)),
            ("compiled", lambda x=x, amax=amax: nvfp4_fake_quant_torch(x, amax, compile=True)),
        ]:
            assert torch.equal(fn(), ref), name  # every variant computes the same bits
            dt = timed(fn, args.repeat)
            print(f"{str(dtype).split('.')[-1]:9} {name:9} {dt * 1e3:8.1f} {mb / dt:8.0f}")


if __name__ == "__main__":
    main()
