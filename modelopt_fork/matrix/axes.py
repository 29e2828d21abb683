"""The matrix's axes."""

from __future__ import annotations

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
