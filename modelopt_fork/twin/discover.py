"""Every MoE causal-LM model type of the installed transformers, found from its registries.

A model type is an MoE causal LM when it has a causal-LM class
(``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``) and its config class's defaults set an expert count
(one of ``shrink.EXPERT_COUNT_KEYS``, in the config, its text config, or one nested dict down,
DBRX's ``ffn_config``). A multimodal type whose causal LM is its text model's (``llama4`` ->
``llama4_text``) is listed once, as the text type. Types whose class defaults name an expert
count but leave it unset or switch the MoE off (``dots1``; ``doge``: ``is_moe=False``;
``gemma4_text``: ``enable_moe_block=False``: dense by default) have ``moe_by_default=False``.
:func:`default_config_dir` writes the config.json a user of the type would have, from the
class defaults alone, with ``architectures`` set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .shrink import EXPERT_COUNT_KEYS, TOP_K_KEYS

# boolean switches of an MoE (Doge's is_moe, Gemma-4's enable_moe_block): False means dense
MOE_FLAGS = ("is_moe", "use_moe", "enable_moe_block", "moe_enabled")


@dataclass(frozen=True)
class MoEType:
    model_type: str  # the type whose config a twin is built from (the text type of a wrapper)
    causal_lm: str  # its causal-LM class name
    experts_key: str  # where the class defaults keep the expert count ("ffn_config.moe_num_experts")
    experts: int | None  # the class default (None: unset, the type is dense by default)
    top_k: int | None
    wrappers: tuple[str, ...] = ()  # multimodal types whose text model this is

    moe_switched_off: str = ""  # a flag of the class defaults that turns the MoE off ("is_moe=False")

    @property
    def moe_by_default(self) -> bool:
        return isinstance(self.experts, int) and self.experts >= 1 and not self.moe_switched_off


def _experts(d: dict) -> tuple[str, int | None, int | None] | None:
    subs = [("", d)] + [(f"{k}.", v) for k, v in d.items() if isinstance(v, dict)]
    for prefix, sub in subs:
        for key in (*EXPERT_COUNT_KEYS, "moe_num_experts"):
            if key in sub and (sub[key] is None or (isinstance(sub[key], int) and not isinstance(sub[key], bool))):
                top = next((sub[t] for t in (*TOP_K_KEYS, "moe_top_k") if isinstance(sub.get(t), int)), None)
                return prefix + key, sub[key], top
    return None


def _causal_lm_names() -> dict[str, str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return {k: (v[0] if isinstance(v, (list, tuple)) else v) for k, v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items()}


def default_config(model_type: str):
    """The config class's defaults (None if the class needs arguments)."""
    import warnings

    from transformers import CONFIG_MAPPING
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CONFIG_MAPPING[model_type]()
    except Exception:  # noqa: BLE001 -- a class without usable defaults is no candidate
        return None
    finally:
        logging.set_verbosity(verbosity)


def moe_model_types(*, include_dense_by_default: bool = False) -> list[MoEType]:
    """The MoE causal-LM model types of the installed transformers, sorted by name."""
    names = _causal_lm_names()
    found: dict[str, MoEType] = {}
    wrappers: dict[str, list[str]] = {}
    for model_type in sorted(names):
        cfg = default_config(model_type)
        if cfg is None:
            continue
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        text_type = getattr(text, "model_type", model_type) or model_type
        hit = _experts(text.to_dict())
        if hit is None:
            continue
        if text_type != model_type and text_type in names:
            wrappers.setdefault(text_type, []).append(model_type)
            continue
        key, n, k = hit
        off = next((f"{f}=False" for f in MOE_FLAGS if text.to_dict().get(f) is False), "")
        found[model_type] = MoEType(model_type, names[model_type], key, n, k, moe_switched_off=off)
    out = [MoEType(**{**t.__dict__, "wrappers": tuple(wrappers.get(t.model_type, ()))}) for t in found.values()]
    return [t for t in out if include_dense_by_default or t.moe_by_default]


def default_config_dir(model_type: str, directory: Path) -> Path:
    """Write ``directory/config.json`` from the class defaults of ``model_type`` (architectures set)."""
    cfg = default_config(model_type)
    if cfg is None:
        raise ValueError(f"{model_type}: its config class does not build from defaults")
    cfg.architectures = [_causal_lm_names()[model_type]]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(directory)
    json.loads((directory / "config.json").read_text())  # written as transformers writes it
    return directory
