"""The matrix's runtime stage, measured: reference runtime in vLLM's convention vs the calibrated model.

    python benchmarks/runtime_stage_agreement.py [--arch A ...] [--cfg C ...] [--scenario S ...]

Runs every CPU cell of the matrix (float32 twins) with the stage's bound lifted and prints, per
cell, the largest |logit difference| relative to the largest logit (the quantity the stage
bounds, ``matrix.cell.RUNTIME_REL_BOUND``), or the stage that failed. With a pristine or older
modelopt first on ``PYTHONPATH`` it measures what the stage would say of that tree's exports.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def main() -> int:
    import torch
    import transformers

    import modelopt
    import modelopt_fork.matrix.cell as cell
    from modelopt_fork.matrix.axes import all_cells

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*")
    ap.add_argument("--cfg", nargs="*")
    ap.add_argument("--scenario", nargs="*")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    bound, cell.RUNTIME_REL_BOUND = cell.RUNTIME_REL_BOUND, float("inf")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.platform()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, modelopt from {Path(modelopt.__file__).parent}")
    print("| arch | config | scenario | runtime: max abs / max logit | result |")
    print("|---|---|---|---:|---|")
    worst = 0.0
    for arch, cfg, scen in all_cells(a.arch, a.cfg, a.scenario):
        with tempfile.TemporaryDirectory() as d:
            r = cell.run_cell(arch, cfg, scen, device="cpu", out_dir=Path(d), seed=a.seed, stages=("runtime",))
        rel = r.info.get("runtime", {}).get("vs_calibrated_rel")
        worst = max(worst, rel or 0.0)
        print(f"| {arch} | {cfg} | {scen} | {'' if rel is None else f'{rel:.2e}'} | "
              f"{'ok' if r.ok else f'{r.stage}: {r.error[:90]}'} |", flush=True)
    print(f"\nlargest: {worst:.2e} (the stage's bound, lifted here: {bound:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
