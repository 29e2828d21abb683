"""Build a tiny twin: seeded random weights from a shrunk config, never a download."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..series.errors import ForkError
from .moe import MoEBlock, find_moe_blocks
from .shrink import shrink
from .source import load_config_dict


@dataclass
class Twin:
    name: str  # bundled name or the model directory
    model: torch.nn.Module
    config: object  # the twin's transformers config
    moe_blocks: list[MoEBlock] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size


def twin_config(source: str | Path, *, layers: int = 2, num_experts=None, top_k=None, widths: str = "tiny"):
    """The transformers config of the twin of ``source`` (``widths``: see :func:`.shrink.shrink`)."""
    import transformers
    from transformers import CONFIG_MAPPING

    name, raw = load_config_dict(source)
    d = shrink(raw, layers=layers, num_experts=num_experts, top_k=top_k, widths=widths)
    model_type = d.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ForkError(
            f"{name}: model_type {model_type!r} is not an architecture of transformers "
            f"{transformers.__version__}; twins are built from native transformers classes "
            "(remote code is never run)"
        )
    d.pop("architectures", None)
    return name, transformers.AutoConfig.for_model(model_type, **d)


def build_twin(source: str | Path, *, seed: int = 0, device: str = "cpu", dtype=torch.float32,
               layers: int = 2, num_experts=None, top_k=None, widths: str = "tiny") -> Twin:
    """Build the tiny twin of ``source`` (see :mod:`.source`) with weights from ``seed``.

    ``widths="real"`` keeps the real layer widths (see :func:`.shrink.shrink`); such a twin is
    large, so its weights are created directly on ``device`` in ``dtype``.
    """
    import transformers

    name, cfg = twin_config(source, layers=layers, num_experts=num_experts, top_k=top_k, widths=widths)
    torch.manual_seed(seed)
    try:
        if widths == "real":
            with torch.device(device):
                model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        else:
            model = transformers.AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:
        raise ForkError(f"{name}: transformers {transformers.__version__} has no causal LM for "
                        f"{type(cfg).__name__}: {e}") from e
    cfg.architectures = [type(model).__name__]
    model = model.to(device=device, dtype=dtype).eval()
    for config in {id(c): c for c in (cfg, model.config)}.values():
        _set_config_dtype(config, dtype)
    blocks = find_moe_blocks(model)
    if not blocks:
        raise ForkError(f"{name}: the twin ({type(model).__name__}) has no MoE block with experts")
    return Twin(name=name, model=model, config=cfg, moe_blocks=blocks)


def _set_config_dtype(config, dtype: torch.dtype) -> None:
    """Make ``config`` (and its sub-configs) say ``dtype``, the dtype the twin's weights are in.

    ``from_config`` creates the weights in the real config's dtype (e.g. bfloat16) and
    ``model.to(dtype)`` converts them without touching the config, whereas transformers'
    loaders keep ``config.dtype`` equal to the weights' dtype. ModelOpt's export takes
    ``config.dtype`` as the checkpoint dtype and packs ``weight.to(that dtype)``: a float32
    twin that still says bfloat16 gets its AWQ-smoothed weights (float32 products, not
    bfloat16 values) rounded to bfloat16 before NVFP4 rounding, so the checkpoint no longer
    holds the calibrated model (elements near an E2M1 boundary move by one step).
    """
    config.dtype = dtype
    for key in getattr(config, "sub_configs", None) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            sub.dtype = dtype


def calib_ids(vocab: int, *, seed: int = 0, batch: int = 4, seq: int = 32) -> torch.Tensor:
    """Random token ids (the calibration data of a twin)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)
