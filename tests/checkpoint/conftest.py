"""Exported twin checkpoints, made once per (arch, config) for the whole session and shared read-only.

Tests that change a checkpoint copy it first (``copy_checkpoint``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from _utils.tiny_moe import build, calib_ids

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"]
# AWQ with its scales kept on the linears: TensorRT-LLM's NVFP4_AWQ checkpoint form, written by
# the AWQ option fold_pre_quant_scale=False (and by every ModelOpt release before the fold)
AWQ_KEPT = "NVFP4_AWQ_LITE_CFG+kept"
SEED = 11


@dataclass(frozen=True)
class Exported:
    path: Path
    arch: str
    cfg: str
    ids: torch.Tensor
    fake_logits: torch.Tensor  # the fork's fake-quantized model on ids (float32)


def _export(arch: str, cfg: str, out: Path) -> Exported:
    import modelopt.torch.quantization as mtq
    from _utils.configs import quant_config
    from modelopt.torch.export import export_hf_checkpoint

    model = build(arch, seed=SEED)
    ids = calib_ids(seed=SEED)
    name, _, kept = cfg.partition("+")
    mtq.quantize(model, quant_config(name, fold_pre_quant_scale=False if kept else None), lambda m: m(ids))
    with torch.no_grad():
        fake = model(ids).logits.float()
    export_hf_checkpoint(model, export_dir=out)
    return Exported(out, arch, cfg, ids, fake)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(arch, cfg)`` -> :class:`Exported`; each pair is calibrated and exported once
    (``cfg``: a config name, or :data:`AWQ_KEPT`)."""
    cache: dict[tuple[str, str], Exported] = {}

    def get(arch: str, cfg: str) -> Exported:
        if (arch, cfg) not in cache:
            out = tmp_path_factory.mktemp(f"{arch}-{cfg}") / "ckpt"
            cache[arch, cfg] = _export(arch, cfg, out)
        return cache[arch, cfg]

    return get


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
