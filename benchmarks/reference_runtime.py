"""Reference NVFP4 runtime vs the fake-quantized and the original tiny twins: one table row per arch x config.

Usage: python benchmarks/reference_runtime.py [--device cpu|cuda] [--seeds 11 12 13]

For each tiny twin (tests/_utils/tiny_moe.py) and NVFP4 config: calibrate on calib_ids(seed),
evaluate on calib_ids(seed + 1), export to a temporary directory, load it with
modelopt_fork.reference.load_reference_model and print

* ref~fake: reference vs the fake-quant model in the state export quantizes it (after
  export's fusion / resmooth steps), max |diff| and whether bit-identical;
* cal~fake: the fake-quant model as calibrated vs as exported (what export's scale unification
  and AWQ folding change), max |diff|;
* cosine and max |diff| of the reference, and of the calibrated fake-quant model, vs the
  unquantized original; the largest |logit| for scale.

Prints only; writes nothing but its temporary checkpoints (deleted).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"]


def row(arch, cfg, device, seed):
    import modelopt.torch.quantization as mtq
    from _utils.tiny_moe import build, calib_ids
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt.torch.export.unified_export_hf import _prepare_moe_inputs, requantize_resmooth_fused_llm_layers
    from modelopt_fork.reference.compare import agreement, compare, logits

    model = build(arch, seed=seed, device=device)
    calib, ids = calib_ids(seed=seed).to(device), calib_ids(seed=seed + 1)
    original = logits(model, ids)
    mtq.quantize(model, getattr(mtq, cfg), lambda m: m(calib))
    calibrated = logits(model, ids)
    m = copy.deepcopy(model)
    _prepare_moe_inputs(m, torch.float32, False)
    requantize_resmooth_fused_llm_layers(m)
    fake = logits(m, ids)
    del m
    with tempfile.TemporaryDirectory() as d:
        export_hf_checkpoint(model, export_dir=d)
        r = compare(d, fake, ids, original, device=device)
    cal = agreement(calibrated, original)
    return (f"| {arch} | {cfg} | {device} | {seed} | {r['vs_fake']['max_abs_err']:.2e} | "
            f"{'yes' if r['vs_fake']['bit_exact'] else 'no'} | {(calibrated - fake).abs().max().item():.3f} | "
            f"{r['vs_original']['cosine']:.4f} | {r['vs_original']['max_abs_err']:.3f} | {cal['cosine']:.4f} | "
            f"{cal['max_abs_err']:.3f} | {r['vs_original']['max_abs_ref']:.3f} |")


def main(argv=None) -> int:
    import transformers

    from _utils.tiny_moe import ARCHS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[11])
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("| arch | config | device | seed | ref~fake max | bit-exact | cal~fake max | ref~orig cos | ref~orig max "
          "| cal~orig cos | cal~orig max | max abs logit |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for arch in ARCHS:
        for cfg in CONFIGS:
            for seed in args.seeds:
                print(row(arch, cfg, args.device, seed), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
