"""Upstream's Requires-Dist / Provides-Extra, read from the wheel's METADATA (never retyped)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from .pin import Pin
from .wheel import dist_info_dir

_EXTRA_CLAUSE = re.compile(r"""^(?:\((?P<rest>.*)\) and |(?P<rest2>.*) and )?extra == ["'](?P<extra>[^"']+)["']$""")


@dataclass
class UpstreamMetadata:
    requires_python: str | None
    install_requires: list[str] = field(default_factory=list)
    extras: dict[str, list[str]] = field(default_factory=dict)


def split_extra(req_line: str) -> tuple[str | None, str]:
    """('onnx', 'lief') for 'lief; extra == "onnx"'; (None, line) for a base requirement.

    The remaining marker is re-attached without the extra clause; a marker this
    does not understand is an error, not a silent misfile.
    """
    req = Requirement(req_line)
    if req.marker is None or "extra" not in str(req.marker):
        return None, req_line
    m = _EXTRA_CLAUSE.match(str(req.marker))
    if not m:
        raise ValueError(f"cannot split the extra out of marker {str(req.marker)!r} in {req_line!r}")
    rest = m.group("rest") or m.group("rest2")
    base = str(req).split(";", 1)[0].strip()
    if rest:
        Marker(rest)  # must parse on its own
        return m.group("extra"), f"{base}; {rest}"
    return m.group("extra"), base


def read_metadata(pristine: Path, pin: Pin) -> UpstreamMetadata:
    text = (dist_info_dir(pristine, pin) / "METADATA").read_text(encoding="utf-8")
    msg = HeaderParser().parsestr(text, headersonly=True)
    md = UpstreamMetadata(requires_python=msg.get("Requires-Python"))
    for extra in msg.get_all("Provides-Extra") or []:
        md.extras[extra] = []
    for line in msg.get_all("Requires-Dist") or []:
        extra, req = split_extra(line)
        if extra is None:
            md.install_requires.append(req)
        else:
            md.extras.setdefault(extra, []).append(req)
    return md
