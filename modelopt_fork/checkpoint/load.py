"""Read an exported checkpoint: safetensors shards, ``hf_quant_config.json``, ``config.json``.

Each shard is opened once: its header is checked by safetensors and indexed (name, dtype,
shape, byte range), and a tensor's bytes are read from the kept descriptor only when asked
for, never cached (memory stays at the largest tensor a caller holds; no shard is mapped).
Every file read lies inside the checkpoint directory (no ``..``, no absolute names, no
symlinks out) and is a regular file (a FIFO would block the open).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

import torch

HF_QUANT_CONFIG = "hf_quant_config.json"
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
MAX_JSON_BYTES = 64 << 20  # an index of a million tensors is ~100 MB less than this times two; configs are KB

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
    span: tuple[int, int] = (0, 0)  # absolute byte range of its data in the shard


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, TensorInfo]
    hf_quant_config: dict | None  # None: file absent
    config: dict | None  # None: file absent
    weight_map: dict[str, str] | None = None  # the index's, None: no index
    _fds: dict[str, int] = field(default_factory=dict, repr=False)  # shard -> open descriptor

    def load(self, name: str) -> torch.Tensor:
        """The tensor's values, read from its shard now (not kept: callers drop it when done)."""
        info = self.tensors[name]
        if not isinstance(info.dtype, torch.dtype):
            raise LoadError(f"{self.path / info.file}: tensor {name} has dtype {info.dtype}, which torch cannot read")
        start, end = info.span
        buf = self._read(info.file, start, end - start)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(info.shape) if buf else torch.empty(
            info.shape, dtype=info.dtype)

    def _read(self, file: str, offset: int, size: int) -> bytearray:
        """``size`` bytes of the shard at ``offset``, through the one descriptor kept per shard
        (non-blocking open: a FIFO swapped in after the checks does not hang)."""
        if file not in self._fds:
            self._fds[file] = os.open(self.path / file, os.O_RDONLY | os.O_NONBLOCK)
        buf = bytearray(size)
        if size and os.preadv(self._fds[file], [buf], offset) != size:
            raise LoadError(f"{self.path / file}: shorter than its header says")
        return buf

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

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


def _inside(root: Path, name: object, what: str) -> Path | None:
    """``root / name`` if it exists, after checking it stays in ``root`` and is a regular file."""
    if not isinstance(name, str) or not name:
        raise LoadError(f"{what}: {name!r} is not a file name")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name or "\x00" in name:
        raise LoadError(f"{what}: {name!r} is not a plain name inside the checkpoint directory")
    path = root / rel
    if not path.exists() and not path.is_symlink():
        return None
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise LoadError(f"{path}: resolves to {real}, outside the checkpoint directory")
    try:
        mode = real.stat().st_mode
    except OSError as e:
        raise LoadError(f"{path}: cannot stat ({e})") from e
    if not stat.S_ISREG(mode):
        raise LoadError(f"{path}: not a regular file")
    return path


def _read_json(root: Path, name: str) -> dict | None:
    path = _inside(root, name, str(root))
    if path is None:
        return None
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise LoadError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: bad JSON, huge ints
        raise LoadError(f"{path}: not readable JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _weight_map(root: Path) -> dict[str, str] | None:
    index = _read_json(root, INDEX)
    if index is None:
        return None
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise LoadError(f"{root / INDEX}: no weight_map object")
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
    if bad:
        raise LoadError(f"{root / INDEX}: weight_map[{bad[0][:80]!r}] is {type(bad[1]).__name__}, not a file name")
    if not weight_map:
        raise LoadError(f"{root / INDEX}: weight_map names no tensors")
    return weight_map


def _shard_files(root: Path, weight_map: dict[str, str] | None) -> list[str]:
    if weight_map is not None:
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if _inside(root, f, str(root / INDEX)) is None]
        if missing:
            raise LoadError(f"{root / INDEX}: names shard(s) that do not exist: {missing[:8]}")
        return files
    files = sorted(p.name for p in root.glob("*.safetensors"))
    for f in files:
        _inside(root, f, str(root))
    if not files:
        raise LoadError(f"{root}: no *.safetensors files")
    return files


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Index every tensor (name, dtype, shape, shard, byte range) without reading the weights
    (close it, or use it as a context manager, to release the shards' descriptors)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_dir():
        raise LoadError(f"{path}: not a directory")
    weight_map = _weight_map(path)
    ckpt = Checkpoint(path, {}, _read_json(path, HF_QUANT_CONFIG), _read_json(path, CONFIG), weight_map)
    tensors = ckpt.tensors
    for fname in _shard_files(path, weight_map):
        try:
            with safe_open(path / fname, framework="pt") as f:  # checks the header; then its offsets:
                start = 8 + int.from_bytes(ckpt._read(fname, 0, 8), "little")
                header = json.loads(ckpt._read(fname, 8, start - 8))
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    sl = f.get_slice(name)
                    tag = sl.get_dtype()
                    if name in tensors:
                        raise LoadError(f"{path}: tensor {name} is in both {tensors[name].file} and {fname}")
                    b, e = header[name]["data_offsets"]
                    tensors[name] = TensorInfo(name, fname, _DTYPES.get(tag, tag), tuple(sl.get_shape()),
                                               (start + b, start + e))
        except (SafetensorError, OSError, ValueError) as e:
            ckpt.close()
            raise LoadError(f"{path / fname}: not a readable safetensors file ({e})") from None
    return ckpt


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint at ``path``, read: the shards of its index (else every
    ``*.safetensors``), a shard at a time. :class:`LoadError` as in :func:`load_checkpoint` (e.g. a
    name in two shards)."""
    from safetensors.torch import load_file

    with load_checkpoint(path) as ckpt:
        files = sorted({info.file for info in ckpt.tensors.values()})
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        tensors.update(load_file(ckpt.path / fname))
    return tensors
