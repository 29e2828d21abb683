"""Quantization configs as the tests use them."""

from __future__ import annotations

import copy


def quant_config(cfg, *, fold_pre_quant_scale: bool | None = None) -> dict:
    """The ``mtq`` config named ``cfg`` (or ``cfg`` itself, a dict), as a copy.

    ``fold_pre_quant_scale=False`` (AWQ configs): keep the AWQ scales on the input quantizers,
    TensorRT-LLM's NVFP4_AWQ checkpoint form, instead of folding them into the model.
    """
    import modelopt.torch.quantization as mtq

    out = copy.deepcopy(getattr(mtq, cfg) if isinstance(cfg, str) else cfg)
    if fold_pre_quant_scale is not None:
        algorithm = out["algorithm"]
        if "awq" not in str(algorithm):
            raise ValueError(f"fold_pre_quant_scale is an AWQ option; {cfg} uses {algorithm!r}")
        out["algorithm"] = {**({"method": algorithm} if isinstance(algorithm, str) else algorithm),
                            "fold_pre_quant_scale": fold_pre_quant_scale}
    return out
