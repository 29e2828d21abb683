"""Why upstream's test_gptq_export_roundtrip differs between trees (a GPU probe; prints a table).

The test (tests/gpu/torch/quantization/test_gptq.py at a2fbac7b) runs GPTQ on a bf16 128x128
linear with NVFP4_DEFAULT_CFG, then packs the GPTQ'd weight with export and compares the
dequantized checkpoint weight with the GPTQ kernel's QDQ weight at atol=1e-2. The checkpoint
re-derives each block's scale from the GPTQ'd weight (NVFP4 weights are dynamic block
quantized), the GPTQ kernel used the block amax of the original weight: where a block's
largest QDQ value is below 6 steps its grid changes. This probe counts, per seed, the
blocks whose checkpoint values differ from the QDQ values, the largest |checkpoint - QDQ|, and
the largest |checkpoint - the model's own fake-quant weight| (what the calibrated model computes).

    PYTHONPATH=<tree> python3 benchmarks/gpu_gptq_roundtrip_probe.py LABEL [SEEDS]
"""

import sys

import torch

import modelopt.torch.quantization as mtq
from modelopt.torch.export.unified_export_hf import _export_quantized_weight
from modelopt.torch.quantization.model_calib import gptq
from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor


def probe(seed, dim=128):
    torch.manual_seed(seed)
    model = torch.nn.Linear(dim, dim, dtype=torch.bfloat16).to("cuda")
    original = model.weight.data.clone()
    x = torch.randn(2, 16, dim, dtype=torch.bfloat16).to("cuda")
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, forward_loop=lambda m: m(x))
    model.weight.data = original.clone()
    gptq(model, forward_loop=lambda m: m(x), perc_damp=0.1, block_size=16)
    qdq = model.weight.data.clone()
    with torch.no_grad():
        fake = model.weight_quantizer(qdq)
    _export_quantized_weight(model, torch.bfloat16)
    deq = NVFP4QTensor(qdq.shape, qdq.dtype, model.weight.data).dequantize(
        dtype=torch.bfloat16, scale=model.weight_scale, double_scale=model.weight_scale_2,
        block_sizes={-1: 16})
    d = (deq.float() - qdq.float()).abs().reshape(dim, -1, 16)
    changed = d.amax(-1) > 0
    # the worst element: its QDQ and checkpoint values in units of the checkpoint's block scale
    r, b, e = (int(i) for i in torch.unravel_index(d.argmax(), d.shape))
    scale = model.weight_scale.float()[r, b].item() * model.weight_scale_2.float().item()
    worst = (f"qdq {qdq.float()[r, b * 16 + e].item() / scale:+.4f} ckpt {deq.float()[r, b * 16 + e].item() / scale:+.4f}"
             f" block max|qdq| {qdq.float()[r, b * 16:(b + 1) * 16].abs().max().item() / scale:.4f} (scale units)")
    return (changed.sum().item(), changed.numel(), d.max().item(),
            (deq.float() - fake.float()).abs().max().item(), worst)


label = sys.argv[1]
seeds = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [42]
print("| tree | seed | blocks changed | max abs diff vs QDQ (test: atol 1e-2) | vs model fake-quant | worst element |")
print("|---|---|---|---|---|---|")
for s in seeds:
    n, tot, mx, vs_fake, worst = probe(s)
    print(f"| {label} | {s} | {n}/{tot} | {mx:.4g} | {vs_fake:.3g} | {worst} |")
