"""Structural checks of an exported NVFP4 checkpoint that every cell must pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..checkpoint.load import load_tensors


def _layer_of(prefix: str) -> str:
    """The decoder layer's ``layers.N.`` (or ``blocks.N.``) part of a module name."""
    m = re.search(r"((?:layers|blocks)\.\d+\.)", prefix)
    return m.group(1) if m else prefix


def _in_layer(key: str, layer: str) -> bool:
    # the exporter may also rename what holds the layers (NemotronH: model.layers -> backbone.layers)
    return key.startswith(layer) or f".{layer}" in key


def structural_problems(ckpt: Path, cfg: str, expert_prefixes: list[str]) -> list[str]:
    """Problems with the checkpoint at ``ckpt``; ``expert_prefixes`` are the twin's experts modules."""
    problems = []
    quant = json.loads((Path(ckpt) / "hf_quant_config.json").read_text())["quantization"]
    algos = {quant["quant_algo"]} | {v["quant_algo"] for v in quant.get("quantized_layers", {}).values()}
    if not algos <= {"NVFP4", "NVFP4_AWQ", "MIXED_PRECISION"}:
        problems.append(f"hf_quant_config.json: unexpected quant_algo {sorted(algos)}")
    if cfg == "NVFP4_DEFAULT_CFG" and quant["quant_algo"] != "NVFP4":
        problems.append(f"hf_quant_config.json: quant_algo {quant['quant_algo']!r}, expected 'NVFP4'")
    tensors = load_tensors(ckpt)
    packed = [k for k, v in tensors.items() if k.endswith(".weight") and v.dtype == torch.uint8]
    for prefix in expert_prefixes:
        # the exporter may rename the block (e.g. Mixtral's mlp -> block_sparse_moe) and what
        # holds the layers (NemotronH's backbone); the decoder layer's index stays
        layer = _layer_of(prefix)
        if not any(_in_layer(k, layer) and ".experts." in k for k in packed):
            problems.append(f"{prefix}: no quantized expert weight in the checkpoint")
    for k in packed:
        base = k[: -len(".weight")]
        for suffix in ("weight_scale", "weight_scale_2", "input_scale"):
            if f"{base}.{suffix}" not in tensors:
                problems.append(f"{base}.{suffix}: missing")
        s2, inp = tensors.get(f"{base}.weight_scale_2"), tensors.get(f"{base}.input_scale")
        for name, t in ((f"{base}.weight_scale_2", s2), (f"{base}.input_scale", inp)):
            if t is not None and not (t.dim() == 0 and torch.isfinite(t) and t > 0):
                problems.append(f"{name}: expected a finite positive 0-d scalar, got shape "
                                f"{tuple(t.shape)} values {t.flatten()[:4].tolist()}")
        ws = tensors.get(f"{base}.weight_scale")
        if ws is not None and not torch.isfinite(ws.float()).all():
            problems.append(f"{base}.weight_scale: non-finite FP8 block scales")
    return problems
