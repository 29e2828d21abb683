"""Run every rule of :mod:`.rules` over a checkpoint directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class Violation:
    tensor: str  # tensor name, or "file.json:key.path" for configuration
    rule: str
    found: str
    expected: str
    file: str | None = None  # shard holding the tensor

    def format(self) -> str:
        where = f" ({self.file})" if self.file else ""
        return f"{self.tensor}{where}: {self.rule}: found {self.found}; expected {self.expected}"


def validate_checkpoint(path: str | Path, runtimes=None) -> list[Violation]:
    """Violations of the consumer contract, sorted by tensor name then rule.

    ``runtimes``: the runtimes the checkpoint must load in (:data:`.rules.RUNTIMES`, the default:
    both vLLM and TensorRT-LLM; ``("tensorrt-llm",)`` for TensorRT-LLM's NVFP4_AWQ form, which
    keeps AWQ pre_quant_scale tensors that vLLM refuses).

    Raises :class:`~modelopt_fork.checkpoint.load.LoadError` when the directory cannot be read
    as a checkpoint at all (missing, no safetensors, unreadable JSON or shard, a file outside the
    directory or not a regular file).
    """
    from .layout import Layout
    from .load import load_checkpoint
    from .rules import RUNTIMES, rules_for

    found: set[Violation] = set()
    with load_checkpoint(path) as ckpt:  # one descriptor per shard; rules read tensors and drop them
        layout = Layout(ckpt)
        for rule in rules_for(RUNTIMES if runtimes is None else tuple(runtimes)):
            for tensor, what, expected in rule.check(layout):
                info = ckpt.tensors.get(tensor)
                found.add(Violation(tensor, rule.id, what, expected, info.file if info else None))
    return sorted(found)
