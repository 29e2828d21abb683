"""Synthetic upstream releases for the series tests: a tiny package tree + dist-info, zipped, hashed."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

DIST = "nvidia-modelopt"
_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same bytes


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(dest: Path, version: str, files: dict[str, str]) -> Path:
    """A py3-none-any wheel of nvidia-modelopt ``version`` holding ``files`` (path -> text) in ``dest``."""
    stem = f"{DIST.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {DIST}\nVersion: {version}\n"
    members[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{p},{_record_hash(t.encode())},{len(t.encode())}" for p, t in members.items()]
    members[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(zipfile.ZipInfo(name, _EPOCH), text)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pin_toml(version: str, wheel: Path) -> str:
    return (
        "# test pin\n[upstream]\n"
        f'distribution = "{DIST}"\nversion = "{version}"\nwheel = "{wheel.name}"\nsha256 = "{sha256(wheel)}"\n'
        'packages = ["modelopt", "modelopt_recipes"]\n\n[fork]\nlocal-version = "test.1"\n'
    )


def module(name: str, n: int = 30, *, changed: dict[int, str] | None = None, prepend: int = 0) -> str:
    """A module of ``n`` small functions (``f_i`` returns ``i``); ``changed`` replaces return lines."""
    lines = [f'"""{name}: synthetic upstream module."""', ""]
    lines += [f"# upstream added this line ({k})" for k in range(prepend)]
    for i in range(n):
        lines += ["", f"def f_{i}():", (changed or {}).get(i, f"    return {i}")]
    return "\n".join(lines) + "\n"


def fork_of(tmp_path: Path, monkeypatch, members: dict[str, str], version: str = "0.47.0") -> Path:
    """An empty fork project in ``tmp_path / "fork"`` pinned to a synthetic wheel of ``members``."""
    root = tmp_path / "fork"
    (root / "patches").mkdir(parents=True)
    wheel = build_wheel(tmp_path / f"wheels-{version}", version, members)
    (root / "UPSTREAM.toml").write_text(pin_toml(version, wheel))
    (root / "patches" / "series").write_text("# tiny series\n")
    monkeypatch.setenv("MODELOPT_FORK_WHEEL", str(wheel))
    monkeypatch.delenv("MODELOPT_FORK_ROOT", raising=False)
    return root
