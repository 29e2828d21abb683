"""Build a tiny twin: seeded random weights from a shrunk config, never a download."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..series.errors import ForkError
from .layout import choose_layers, layout_keys
from .moe import MoEBlock, find_moe_blocks
from .shrink import RUNTIME, TINY, shrink, text_part
from .source import load_config_dict

# Most parameters a twin may have, per widths ("real" keeps the real widths: no bound). The
# largest bundled twins have 1.7M (tiny: gemma4-26b-a4b, deepseek-v3 with --experts real) and
# 26.6M (runtime: deepseek-v3, --experts real), so every bundled twin fits with a margin > 3.5x.
PARAM_BUDGET = {"tiny": 10_000_000, "runtime": 100_000_000}
try:  # transformers 5's strict config dataclasses raise these for a failed validator
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - older huggingface_hub (transformers 4.57)
    StrictDataclassError = ValueError
CONFIG_ERRORS = (ValueError, TypeError, KeyError, AttributeError, StrictDataclassError)


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
    import copy
    import json

    name, raw = load_config_dict(source)
    # the layout checks build meta models (full depth for the real layer roles): remember each
    # result for the process, keyed by the config's content; callers get their own copy
    key = (name, json.dumps(raw, sort_keys=True, default=str), layers, str(num_experts), top_k, widths)
    if key not in _TWIN_CONFIGS:
        _TWIN_CONFIGS[key] = _twin_config(name, raw, layers=layers, num_experts=num_experts, top_k=top_k,
                                          widths=widths)
    return name, copy.deepcopy(_TWIN_CONFIGS[key])


_TWIN_CONFIGS: dict = {}


def _twin_config(name: str, raw: dict, *, layers, num_experts, top_k, widths):
    import transformers
    from transformers import CONFIG_MAPPING

    model_type = text_part(raw)["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ForkError(
            f"{name}: model_type {model_type!r} is not an architecture of transformers "
            f"{transformers.__version__}; twins are built from native transformers classes "
            "(remote code is never run)"
        )
    cls = CONFIG_MAPPING[model_type]
    kw = dict(num_experts=num_experts, top_k=top_k, widths=widths, defaults=_class_defaults(cls),
              aliases=getattr(cls, "attribute_map", None))
    try:
        # the real layer layout, on the shrunk widths: which layers have MoE blocks and attention
        full = shrink(raw, layers=None, **kw)
        full_cfg = _make_config(model_type, full)
        _check_experts(name, full_cfg)  # before any build: per-expert modules cost memory even on meta
        roles = layer_roles(full_cfg)
        keep = choose_layers(full, layers, moe=roles and roles[0], attention=roles and roles[1])
        d = shrink(raw, keep=keep, **kw)
        cfg = _make_config(model_type, d)
        if roles is not None:
            cfg = _check_layout(model_type, raw, kw, d, cfg, roles, keep, layers)
        if getattr(cfg, "use_cache", False) and not _cache_builds(cfg):
            cfg.use_cache = False  # the forward would fail creating its cache; twins never decode
    except CONFIG_ERRORS as e:
        raise ForkError(f"{name}: cannot make a twin of this config: {type(e).__name__}: "
                        f"{' '.join(str(e).split())}") from None
    if widths in PARAM_BUDGET:
        _check_budget(name, cfg, PARAM_BUDGET[widths], max((RUNTIME if widths == "runtime" else TINY).values()))
    return cfg


def _make_config(model_type: str, d: dict):
    import transformers

    d = dict(d)
    d.pop("model_type", None)
    d.pop("architectures", None)
    return transformers.AutoConfig.for_model(model_type, **d)


def meta_model(cfg) -> torch.nn.Module:
    """``cfg``'s causal LM on the meta device: no memory, and no weight init (on meta tensors,
    transformers 4.57's init costs ~2 ms per tensor through torch's reference ops)."""
    import transformers

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.57
        from transformers.modeling_utils import no_init_weights
    with torch.device("meta"), no_init_weights():
        return transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg))


def _decoder_layers(model: torch.nn.Module) -> tuple[str, int]:
    """(name, length) of the model's decoder-layer list: the longest ModuleList named ``layers``
    (or ``blocks``, DBRX; ``h``, GPT-2 style)."""
    best = ("", 0)
    for n, m in model.named_modules():
        if (isinstance(m, torch.nn.ModuleList) and n.rsplit(".", 1)[-1] in ("layers", "blocks", "h")
                and len(m) > best[1]):
            best = (n, len(m))
    return best


def layer_roles(cfg) -> tuple[list[bool], list[bool] | None] | None:
    """Per decoder layer of ``cfg``'s model: (has an MoE block, has softmax attention or None if unknown).

    The model is built on the meta device (no memory, no init); None when it does not build or has
    no decoder-layer list. Attention comes from the config's resolved ``layer_types`` (or
    ``layers_block_type``), which transformers' caches use too.
    """
    from .layout import is_attention

    try:
        model = meta_model(cfg)
    except Exception:  # the build stage reports why it does not build
        return None
    prefix, n = _decoder_layers(model)
    if not n:
        return None
    moe = [False] * n
    for b in find_moe_blocks(model):
        head, _, rest = b.name.partition(prefix + ".")
        if not head and rest.split(".")[0].isdigit():
            moe[int(rest.split(".")[0])] = True
    attention = None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("layer_types", "layers_block_type"):
        kinds = getattr(text, key, None)
        if isinstance(kinds, (list, tuple)) and len(kinds) == n:
            attention = [is_attention(k) for k in kinds]
            break
    return moe, attention


def _check_layout(model_type, raw, kw, d, cfg, roles, keep, layers):
    """The twin's layers must be the real layers it keeps (MoE or not, attention or not).

    Periodic keys (``decoder_sparse_step``, ``attn_layer_period``, ...) are evaluated on the twin's
    layer indices, so a kept set that is not a prefix can change what a layer is: then the twin
    keeps a prefix of the real layers instead. Raises ValueError when the twin still has no MoE
    layer (or no attention layer where the real model has one).
    """
    moe, attention = roles

    def differs(got, kept):
        return got is not None and (got[0] != [moe[i] for i in kept] or (
            attention is not None and got[1] is not None and got[1] != [attention[i] for i in kept]))

    got = layer_roles(cfg)
    if differs(got, keep):
        keep = list(range(max(keep[-1] + 1, layers or 0)))
        d = shrink(raw, keep=keep, **kw)
        cfg = _make_config(model_type, d)
        got = layer_roles(cfg)
        if differs(got, keep):
            raise ValueError(f"the twin's layers differ from the real layers {keep} they stand for; "
                             f"layout keys: {', '.join(layout_keys(d)) or 'none found'}")
    if got is not None:
        if any(moe) and not any(got[0]):
            raise ValueError(f"the twin has no MoE layer; layout keys: {', '.join(layout_keys(d)) or 'none found'}")
        if attention and any(attention) and got[1] is not None and not any(got[1]):
            raise ValueError(f"the twin has no attention layer; layout keys: {', '.join(layout_keys(d))}")
    return cfg


def _cache_builds(cfg) -> bool:
    """Whether the DynamicCache a forward with ``use_cache`` creates builds and reports a length.

    transformers 5.14 has no cache layer for NemotronH's ``mlp`` layers (KeyError), and a cache of
    linear-attention layers only (a hybrid's class defaults without attention layers) refuses
    ``get_seq_length``.
    """
    try:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=cfg)
    except TypeError:  # transformers 4.57: no config-shaped cache; each model builds its own
        return True
    except Exception:  # noqa: BLE001
        return False
    try:
        cache.get_seq_length()
    except Exception:  # noqa: BLE001
        return False
    return True


def _class_defaults(config_class) -> dict:
    try:
        return config_class().to_dict()
    except Exception:  # a class that needs arguments: no defaults to fill in
        return {}


# Most experts a twin may have: real MoEs have up to a few hundred (DeepSeek-V3 256, Qwen3.5 512).
# Checked before the meta build below, which with per-expert modules (transformers 4.57) creates
# Python objects per expert even on the meta device (a million experts: over 10 GB).
MAX_EXPERTS = 2048


def _check_experts(name: str, cfg) -> None:
    from .shrink import EXPERT_COUNT_KEYS

    subs = [("", cfg)] + [(f"{k}.", getattr(cfg, k, None)) for k in (getattr(cfg, "sub_configs", None) or {})]
    for prefix, sub in subs:
        for key in EXPERT_COUNT_KEYS:
            n = getattr(sub, key, None) if sub is not None else None
            if isinstance(n, int) and n > MAX_EXPERTS:
                raise ForkError(f"{name}: its twin would have {prefix}{key}={n} experts, over the budget of "
                                f"{MAX_EXPERTS} experts a twin may have (give --experts N)")


def _check_budget(name: str, cfg, budget: int, width_limit: int) -> None:
    """Build the twin on the meta device (no memory, no init) and count its parameters."""

    _check_experts(name, cfg)
    try:
        model = meta_model(cfg)
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
