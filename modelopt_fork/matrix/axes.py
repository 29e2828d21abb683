"""The matrix's axes."""

from __future__ import annotations

import copy

from ..twin.scenarios import SCENARIOS
from ..twin.source import BUNDLED

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG", "NVFP4_AWQ_FULL_CFG"]
SHORT = {"NVFP4_DEFAULT_CFG": "nvfp4", "NVFP4_AWQ_LITE_CFG": "awq_lite", "NVFP4_AWQ_FULL_CFG": "awq_full"}


def transformers_line() -> str:
    import transformers
    from packaging.version import Version

    v = Version(transformers.__version__)
    return f"{v.major}.{v.minor}"


def archs() -> list[str]:
    """Bundled architectures that the installed transformers has (Gemma-4 needs >= 5)."""
    from transformers import CONFIG_MAPPING

    from ..twin.shrink import text_part
    from ..twin.source import load_config_dict

    return [a for a in BUNDLED if text_part(load_config_dict(a)[1])["model_type"] in CONFIG_MAPPING]


def all_cells(arch_list=None, configs=None, scenarios=None) -> list[tuple[str, str, str]]:
    return [(a, c, s) for a in (arch_list or archs()) for c in (configs or CONFIGS)
            for s in (scenarios or SCENARIOS)]


def quant_config(cfg, *, fold_pre_quant_scale: bool | None = None) -> dict:
    """The ``mtq`` config named ``cfg`` (or ``cfg`` itself, a dict), as a copy.

    ``fold_pre_quant_scale=False`` (AWQ configs): keep the AWQ scales on the input quantizers,
    TensorRT-LLM's NVFP4_AWQ checkpoint form, instead of folding them into the model. A ModelOpt
    without the option (pristine 0.47.0) always keeps them: the config is then left as it is.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.config import AWQLiteCalibConfig

    out = copy.deepcopy(getattr(mtq, cfg) if isinstance(cfg, str) else cfg)
    if fold_pre_quant_scale is not None:
        algorithm = out["algorithm"]
        if "awq" not in str(algorithm):
            raise ValueError(f"fold_pre_quant_scale is an AWQ option; {cfg} uses {algorithm!r}")
        if "fold_pre_quant_scale" not in AWQLiteCalibConfig.model_fields:
            if fold_pre_quant_scale:
                raise ValueError("this ModelOpt cannot fold AWQ pre_quant_scale at calibration")
            return out
        out["algorithm"] = {**({"method": algorithm} if isinstance(algorithm, str) else algorithm),
                            "fold_pre_quant_scale": fold_pre_quant_scale}
    return out
