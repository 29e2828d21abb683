"""Why the Gemma-4 tiny twin's NVFP4 logits sit at cosine ~0.79 to the original (others ~0.98).

Usage: python benchmarks/twin_sensitivity.py [--archs qwen3_moe gemma4] [--seeds 11 12 13]
(transformers >= 5 for gemma4). Prints, per tiny twin (calibrate on calib_ids(seed), evaluate
on calib_ids(seed + 1), NVFP4_DEFAULT_CFG fake quant, cosine of the logits to the original):

1. perturbations that have nothing to do with NVFP4: a bfloat16 cast, and every linear weight
   multiplied by (1 + eps * N(0, 1));
2. NVFP4 with all quantizers, and with only the quantizers of one part enabled;
3. attention: softmax scaling, mean largest attention probability and entropy (nats);
4. relative error of the hidden states after each decoder layer, and their norms;
5. (gemma4) NVFP4 cosine with the attention scaling set to 0.5 and 0.25 in both models.

Prints only.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PARTS = [["self_attn"], ["self_attn.q_proj", "self_attn.k_proj"], ["v_proj", "o_proj"], ["experts"], ["mlp."],
         ["per_layer"], ["input_quantizer"], ["weight_quantizer"]]


def _logits(m, ids, **kw):
    with torch.no_grad():
        return m(ids, **kw)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def _quantized(base, calib, only=None):
    import modelopt.torch.quantization as mtq

    m = copy.deepcopy(base)
    mtq.quantize(m, mtq.NVFP4_DEFAULT_CFG, lambda mm: mm(calib))
    if only is not None:
        for n, mod in m.named_modules():
            if n.endswith("quantizer") and hasattr(mod, "disable") and not any(o in n for o in only):
                mod.disable()
    return m


def report(arch, seed):
    from _utils.tiny_moe import build, calib_ids

    calib, ids = calib_ids(seed=seed), calib_ids(seed=seed + 1)
    base = build(arch, seed=seed)
    base.config._attn_implementation = "eager"  # to read attention probabilities
    orig = _logits(base, ids, output_hidden_states=True, output_attentions=True)
    print(f"\n## {arch}, seed {seed}")
    print(f"bfloat16 cast: cos {_cos(_logits(copy.deepcopy(base).to(torch.bfloat16), ids).logits, orig.logits):.4f}")
    for eps in (0.01, 0.05):
        m = copy.deepcopy(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.dim() >= 2 and not any(s in n for s in ("embed", "lm_head", "router", ".gate.")):
                    p.mul_(1 + eps * torch.randn(p.shape, generator=g))
        print(f"weights * (1 + {eps} N(0,1)): cos {_cos(_logits(m, ids).logits, orig.logits):.4f}")
    q = _quantized(base, calib)
    out = _logits(q, ids, output_hidden_states=True)
    print(f"NVFP4 all: cos {_cos(out.logits, orig.logits):.4f}")
    for part in PARTS:
        if part == ["per_layer"] and not any("per_layer" in n for n, _ in base.named_modules()):
            continue
        print(f"NVFP4 only {part}: cos {_cos(_logits(_quantized(base, calib, part), ids).logits, orig.logits):.4f}")
    att = orig.attentions
    ent = [(-(a.clamp_min(1e-12).log() * a).sum(-1)).mean().item() for a in att]
    attn0 = base.model.layers[0].self_attn
    print(f"attention scaling {attn0.scaling}, head_dim {attn0.head_dim}; "
          f"mean max prob {[round(a.amax(-1).mean().item(), 3) for a in att]}, entropy {[round(e, 3) for e in ent]}")
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(out.hidden_states, orig.hidden_states, strict=True)]
    print(f"hidden-state relative error by layer {[round(r, 3) for r in rel]}; "
          f"norms {[round(h.norm().item(), 1) for h in orig.hidden_states]}")
    if arch == "gemma4":
        for scaling in (0.5, 0.25):
            b2 = copy.deepcopy(base)
            for layer in b2.model.layers:
                layer.self_attn.scaling = scaling
            o2 = _logits(b2, ids).logits
            print(f"attention scaling {scaling}: NVFP4 cos {_cos(_logits(_quantized(b2, calib), ids).logits, o2):.4f}, "
                  f"bf16 cos {_cos(_logits(copy.deepcopy(b2).to(torch.bfloat16), ids).logits, o2):.4f}")


def main(argv=None) -> int:
    from _utils.tiny_moe import ARCHS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=[a for a in ("qwen3_moe", "gemma4") if a in ARCHS])
    p.add_argument("--seeds", type=int, nargs="+", default=[11])
    args = p.parse_args(argv)
    for arch in args.archs:
        for seed in args.seeds:
            report(arch, seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
