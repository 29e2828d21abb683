"""Get the pinned upstream wheel (env var, cache, or `pip download`) and verify its sha256."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import HashMismatchError, PinError
from .pin import Pin

WHEEL_ENV = "MODELOPT_FORK_WHEEL"
STATE_DIR = ".modelopt-fork"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, pin: Pin) -> Path:
    actual = sha256_file(path)
    if actual != pin.sha256:
        raise HashMismatchError(
            f"{path}: sha256 mismatch for {pin.requirement}\n"
            f"  expected {pin.sha256} (UPSTREAM.toml)\n"
            f"  found    {actual}\n"
            "Refusing to build from an unverified upstream. If the pin is what changed, "
            "use `modelopt-fork rebase`; otherwise delete the file and retry."
        )
    return path


def cache_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR / "cache"


def pip_download(requirement: str, dest: Path, log) -> Path:
    """``pip download`` the wheel of ``requirement`` (no dependencies) into the empty dir ``dest``; its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(dest), requirement,
    ]
    log(f"downloading {requirement} with pip")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise PinError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}):\n{tail}")
    found = sorted(p for p in Path(dest).iterdir() if p.suffix == ".whl")
    if len(found) != 1:
        raise PinError(f"pip download of {requirement} produced {[p.name for p in found]}, expected one wheel")
    return found[0]


def _pip_download(pin: Pin, dest: Path, log) -> Path:
    try:
        got = pip_download(pin.requirement, dest, log)
    except PinError as e:
        raise PinError(f"{e}\nOffline? Point {WHEEL_ENV} at a local copy of {pin.wheel}.") from None
    if got.name != pin.wheel:
        raise PinError(f"pip download produced {got.name}, expected {pin.wheel} (UPSTREAM.toml [upstream].wheel)")
    return got


def obtain_wheel(pin: Pin, root: Path, log=print) -> Path:
    """A verified path to the pinned wheel. Never returns an unverified file."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise PinError(f"{WHEEL_ENV}={env}: no such file")
        return verify(path, pin)
    cached = cache_dir(root) / pin.wheel
    if cached.is_file():
        return verify(cached, pin)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
        got = verify(_pip_download(pin, Path(tmp), log), pin)
        os.replace(got, cached)
    return cached


def unpack(wheel: Path, dest: Path, members_under: tuple[str, ...]) -> None:
    """Extract the top-level directories ``members_under`` (and the .dist-info) of ``wheel``."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            top = info.filename.split("/", 1)[0]
            if top in members_under or top.endswith(".dist-info"):
                target = dest / info.filename
                if not target.resolve().is_relative_to(dest.resolve()):
                    raise PinError(f"{wheel}: member {info.filename!r} escapes the tree")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)


def dist_info_dir(tree: Path, pin: Pin) -> Path:
    name = pin.distribution.replace("-", "_")
    return tree / f"{name}-{pin.version}.dist-info"
