"""The upstream pin (UPSTREAM.toml) and the project layout around it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .errors import PinError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PIN_FILE = "UPSTREAM.toml"
ROOT_ENV = "MODELOPT_FORK_ROOT"


@dataclass(frozen=True)
class Pin:
    distribution: str
    version: str
    wheel: str
    sha256: str
    packages: tuple[str, ...]
    local_version: str
    extra_requires: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def fork_version(self) -> str:
        return f"{self.version}+{self.local_version}"


def load_pin(root: Path) -> Pin:
    path = Path(root) / PIN_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PinError(f"{path}: no upstream pin file") from None
    except tomllib.TOMLDecodeError as e:
        raise PinError(f"{path}: not valid TOML: {e}") from None
    try:
        up, fork = data["upstream"], data["fork"]
        pin = Pin(
            distribution=up["distribution"],
            version=up["version"],
            wheel=up["wheel"],
            sha256=up["sha256"].lower(),
            packages=tuple(up["packages"]),
            local_version=fork["local-version"],
            extra_requires=tuple(fork.get("extra-requires", ())),
        )
    except KeyError as e:
        raise PinError(f"{path}: missing key {e.args[0]!r}") from None
    if len(pin.sha256) != 64 or any(c not in "0123456789abcdef" for c in pin.sha256):
        raise PinError(f"{path}: sha256 must be 64 hex digits, got {pin.sha256!r}")
    try:
        v = Version(pin.fork_version)
    except InvalidVersion:
        raise PinError(
            f"{path}: {pin.fork_version!r} is not a valid PEP 440 version "
            "(check [upstream].version and [fork].local-version)"
        ) from None
    if v.public != pin.version or not v.local:
        raise PinError(f"{path}: version must be a public release plus a local label, got {v}")
    return pin


def find_root(start: Path | None = None) -> Path:
    """The project root: $MODELOPT_FORK_ROOT, else the nearest parent holding UPSTREAM.toml."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).resolve()
        if not (root / PIN_FILE).is_file():
            raise PinError(f"{ROOT_ENV}={env}: no {PIN_FILE} there")
        return root
    candidates = [Path(start or Path.cwd()).resolve()]
    candidates.append(Path(__file__).resolve().parents[2])  # the checkout of an editable install
    for base in candidates:
        for d in (base, *base.parents):
            if (d / PIN_FILE).is_file():
                return d
    raise PinError(f"no {PIN_FILE} found above {candidates[0]}; run inside the fork checkout or set {ROOT_ENV}")


def write_pin(root: Path, *, version: str, wheel: str, sha256: str) -> Pin:
    """Point UPSTREAM.toml's [upstream] at another release; comments and every other line are kept."""
    import tomlkit

    path = Path(root) / PIN_FILE
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    table = doc.get("upstream")
    if not isinstance(table, dict):
        raise PinError(f"{path}: no [upstream] table")
    values = {"version": version, "wheel": wheel, "sha256": sha256}
    for key, value in values.items():
        if not isinstance(table.get(key), str):
            raise PinError(f'{path}: [upstream] has no line {key} = "..." to update')
        table[key] = value
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return load_pin(root)
