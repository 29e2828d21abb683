"""`import modelopt.torch` works with only what the fork declares (base requirements, no extras).

A fresh venv would take minutes; instead a site directory is assembled from
symlinks to just the installed distributions in the closure of
nvidia-modelopt's base Requires-Dist, and a Python started with no site
packages (`-S`) imports from it alone, the way a clean `pip install -e .`
would leave the environment. Upstream 0.47.0 needs requests and
huggingface_hub here without declaring them.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _closure(name: str, seen: set[str]) -> set[str]:
    name = canonicalize_name(name)
    if name not in seen:
        seen.add(name)
        try:
            reqs = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            return seen
        for line in reqs:
            r = Requirement(line)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                _closure(r.name, seen)
    return seen


def _declared_site(dest: Path) -> set[str]:
    allowed = _closure("nvidia-modelopt", set())
    dest.mkdir()
    for dist in md.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in allowed:
            continue
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = base / top
            if src.exists() and not (dest / top).exists():
                os.symlink(src, dest / top)
    return allowed


PROBE = """
import site, sys
site.addsitedir(sys.argv[1])
import modelopt.torch, modelopt.torch.quantization
try:
    import transformers
    print("LEAK transformers")
except ImportError:
    print("OK")
"""


def test_import_modelopt_torch_with_declared_requirements_only(tmp_path):
    allowed = _declared_site(tmp_path / "site")
    assert {"requests", "huggingface-hub", "torch"} <= allowed and "transformers" not in allowed
    proc = subprocess.run([sys.executable, "-S", "-c", PROBE, str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK"
