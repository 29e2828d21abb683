"""Quantization configs as the tests use them."""

from __future__ import annotations

from modelopt_fork.matrix.axes import quant_config

__all__ = ["quant_config"]
