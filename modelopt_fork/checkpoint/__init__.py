"""Exported NVFP4 checkpoints checked against what serving runtimes require.

``load``: read a checkpoint directory (safetensors shards, ``hf_quant_config.json``,
``config.json``); ``layout``: find its quantized modules, experts, fused groups and
routers by name and shape (no per-architecture tables); ``rules``: the single list of
rules, each with the runtime, the failure it prevents and the source it comes from;
``validate``: run them (``modelopt-fork validate CHECKPOINT_DIR``); ``docs``: render
``docs/checkpoint-rules.md`` from the rules.
"""

from .load import Checkpoint, LoadError, load_checkpoint
from .validate import Violation, validate_checkpoint

__all__ = ["Checkpoint", "LoadError", "Violation", "load_checkpoint", "validate_checkpoint"]
