"""Build a tiny twin: seeded random weights from a shrunk config, never a download."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..series.errors import ForkError
from .moe import MoEBlock, find_moe_blocks
from .shrink import RUNTIME, TINY, shrink, text_part
from .source import load_config_dict

# Most parameters a twin may have, per widths ("real" keeps the real widths: no bound). The
# largest bundled twins have 1.7M (tiny: gemma4-26b-a4b, deepseek-v3 with --experts real) and
# 26.6M (runtime: deepseek-v3, --experts real), so every bundled twin fits with a margin > 3.5x.
PARAM_BUDGET = {"tiny": 10_000_000, "runtime": 100_000_000}


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
    """The transformers config of the twin of ``source`` (``widths``: see :func:`.shrink.shrink`).

    Raises ForkError (one line) for a config it cannot shrink and for a twin over ``PARAM_BUDGET``.
    """
    import transformers
    from transformers import CONFIG_MAPPING

    name, raw = load_config_dict(source)
    model_type = text_part(raw)["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ForkError(
            f"{name}: model_type {model_type!r} is not an architecture of transformers "
            f"{transformers.__version__}; twins are built from native transformers classes "
            "(remote code is never run)"
        )
    try:
        cls = CONFIG_MAPPING[model_type]
        d = shrink(raw, layers=layers, num_experts=num_experts, top_k=top_k, widths=widths,
                   defaults=_class_defaults(cls), aliases=getattr(cls, "attribute_map", None))
        d.pop("model_type")
        d.pop("architectures", None)
        cfg = transformers.AutoConfig.for_model(model_type, **d)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ForkError(f"{name}: cannot make a twin of this config: {type(e).__name__}: "
                        f"{' '.join(str(e).split())}") from None
    if widths in PARAM_BUDGET:
        _check_budget(name, cfg, PARAM_BUDGET[widths], max((RUNTIME if widths == "runtime" else TINY).values()))
    return name, cfg


def _class_defaults(config_class) -> dict:
    try:
        return config_class().to_dict()
    except Exception:  # a class that needs arguments: no defaults to fill in
        return {}


# Most experts a twin may have: real MoEs have up to a few hundred (DeepSeek-V3 256, Qwen3.5 512).
# Checked before the meta build below, which with per-expert modules (transformers 4.57) creates
# Python objects per expert even on the meta device (a million experts: over 10 GB).
MAX_EXPERTS = 2048


def _check_budget(name: str, cfg, budget: int, width_limit: int) -> None:
    """Build the twin on the meta device (no memory, no init) and count its parameters."""
    import transformers

    from .shrink import EXPERT_COUNT_KEYS

    subs = [("", cfg)] + [(f"{k}.", getattr(cfg, k, None)) for k in (getattr(cfg, "sub_configs", None) or {})]
    for prefix, sub in subs:
        for key in EXPERT_COUNT_KEYS:
            n = getattr(sub, key, None) if sub is not None else None
            if isinstance(n, int) and n > MAX_EXPERTS:
                raise ForkError(f"{name}: its twin would have {prefix}{key}={n} experts, over the budget of "
                                f"{MAX_EXPERTS} experts a twin may have (give --experts N)")

    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg))
    except Exception:  # the build stage reports why it does not build
        return
    n = sum(p.numel() for p in model.parameters())
    if n > budget:
        keys = _large_sizes(cfg.to_dict(), width_limit)
        raise ForkError(
            f"{name}: its twin would have {n / 1e6:.0f}M parameters, over the {budget / 1e6:.0f}M budget; "
            f"size keys that look unshrunk: {', '.join(keys) or 'none found'} (the twin builder shrinks "
            "the usual names: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
            "expert counts, ...; see modelopt_fork/twin/shrink.py)"
        )


_NOT_SIZES = ("token_id", "theta", "position")  # integers that cost no parameters


def _large_sizes(d: dict, limit: int, prefix: str = "") -> list[str]:
    """'key=value' for the integers of ``d`` (nested dicts too) above ``limit``, and layer counts above 4."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _large_sizes(v, limit, f"{prefix}{k}.")
        elif (isinstance(v, int) and not isinstance(v, bool) and not any(w in k for w in _NOT_SIZES)
              and (v > limit or ("layer" in k and v > 4))):
            out.append(f"{prefix}{k}={v}")
    return out


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
