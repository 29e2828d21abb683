"""Where a twin's config comes from: a bundled name, a model directory, or a config.json path.

Only the config is read, never weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..series.errors import ForkError

CONFIG_DIR = Path(__file__).parent / "configs"
BUNDLED = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
DEFAULT = "gemma4-26b-a4b"


def config_path(source: str | Path) -> Path:
    """Resolve ``source`` to a config.json file."""
    if isinstance(source, str) and source in BUNDLED:
        return CONFIG_DIR / f"{source}.json"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return path
    raise ForkError(
        f"no model config at {source!r}: give a bundled name ({', '.join(BUNDLED)}), "
        "a model directory containing config.json, or a config.json path"
    )


_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _decode_special_floats(obj):
    """transformers >= 5 writes inf/nan in config.json as ``{"__float__": "Infinity"}`` (e.g. Mamba's
    ``time_step_limit``) and decodes them when it reads the file; so does this."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[obj["__float__"]]
        return {k: _decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_special_floats(v) for v in obj]
    return obj


def load_config_dict(source: str | Path) -> tuple[str, dict]:
    """(display name, raw config dict) for ``source``."""
    path = config_path(source)
    try:
        raw = _decode_special_floats(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ForkError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ForkError(f"{path}: a Hugging Face config.json is an object with a string 'model_type'")
    text = raw.get("text_config")
    if text and not (isinstance(text, dict) and isinstance(text.get("model_type"), str)):
        raise ForkError(f"{path}: 'text_config' must be an object with a string 'model_type'")
    name = path.stem if path.parent == CONFIG_DIR else str(path.parent)
    return name, raw
