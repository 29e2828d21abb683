"""Read an exported checkpoint: safetensors shards (lazily), ``hf_quant_config.json``, ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

HF_QUANT_CONFIG = "hf_quant_config.json"
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"

# safetensors dtype tags -> torch dtypes (the ones a checkpoint of ours can hold).
_DTYPES = {
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F16": torch.float16,
    "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "BOOL": torch.bool,
}


class LoadError(Exception):
    """The directory cannot be read as a checkpoint at all (exit code 2, not a rule violation)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str  # shard file name, relative to the checkpoint directory
    dtype: torch.dtype | str  # the dtype tag itself when torch has no such dtype
    shape: tuple[int, ...]


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, TensorInfo]
    hf_quant_config: dict | None  # None: file absent
    config: dict | None  # None: file absent
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def load(self, name: str) -> torch.Tensor:
        """The tensor's values (read on first use and kept: validation reads scales, not weights)."""
        if name not in self._cache:
            from safetensors import safe_open

            info = self.tensors[name]
            with safe_open(self.path / info.file, framework="pt") as f:
                self._cache[name] = f.get_tensor(name)
        return self._cache[name]

    @cached_property
    def quantization(self) -> dict | None:
        """The ``quantization`` section of hf_quant_config.json, else config.json's
        ``quantization_config`` in the nested form (``ignore`` read as ``exclude_modules``)."""
        if self.hf_quant_config is not None and isinstance(self.hf_quant_config.get("quantization"), dict):
            return self.hf_quant_config["quantization"]
        qc = (self.config or {}).get("quantization_config")
        if isinstance(qc, dict):
            q = dict(qc)
            if "exclude_modules" not in q and "ignore" in q:
                q["exclude_modules"] = q["ignore"]
            return q
        return None

    @cached_property
    def model_config(self) -> dict:
        """config.json, with a nested ``text_config`` merged underneath (multimodal wrappers)."""
        cfg = dict(self.config or {})
        text = cfg.get("text_config")
        if isinstance(text, dict):
            cfg = {**text, **cfg}
        return cfg


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LoadError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _shard_files(path: Path) -> list[str]:
    index = _read_json(path / INDEX)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise LoadError(f"{path / INDEX}: no weight_map object")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise LoadError(f"{path / INDEX}: names shard(s) that do not exist: {missing}")
        return files
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path}: no *.safetensors files")
    return files


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Index every tensor (name, dtype, shape, shard) without reading the weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_dir():
        raise LoadError(f"{path}: not a directory")
    tensors: dict[str, TensorInfo] = {}
    for fname in _shard_files(path):
        try:
            with safe_open(path / fname, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    sl = f.get_slice(name)
                    tag = sl.get_dtype()
                    if name in tensors:
                        raise LoadError(f"{path}: tensor {name} is in both {tensors[name].file} and {fname}")
                    tensors[name] = TensorInfo(name, fname, _DTYPES.get(tag, tag), tuple(sl.get_shape()))
        except (SafetensorError, OSError) as e:
            raise LoadError(f"{path / fname}: not a readable safetensors file ({e})") from e
    return Checkpoint(path, tensors, _read_json(path / HF_QUANT_CONFIG), _read_json(path / CONFIG))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path``, read: the shards of its index (else every
    ``*.safetensors``), a shard at a time. :class:`LoadError` as in :func:`load_checkpoint` (e.g. a
    name in two shards)."""
    from safetensors.torch import load_file

    ckpt = load_checkpoint(path)
    tensors: dict[str, torch.Tensor] = {}
    for fname in sorted({info.file for info in ckpt.tensors.values()}):
        tensors.update(load_file(ckpt.path / fname))
    return tensors
