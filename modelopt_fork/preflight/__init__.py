"""`modelopt-fork preflight`: in seconds, will this MoE model calibrate, export and serve as NVFP4?

Builds the tiny twin of the model's config (no weights read), then runs the matrix cell
stages -- calibrate, fake-quant forward, export, structural check, the consumer-contract
validator and the reference NVFP4 runtime -- and reports each stage with its first error.
"""

from .report import QFORMATS, format_report, preflight

__all__ = ["QFORMATS", "format_report", "preflight"]
