"""Build the generated tree: verified wheel -> pristine tree -> series applied -> atomic swap.

* idempotent: a stamp (upstream version, wheel hash, series hash, file manifest)
  says whether the tree already is what the series produces;
* atomic: the series is applied in a staging dir next to the destination, and
  only a fully patched tree is renamed into place;
* offline: $MODELOPT_FORK_WHEEL points at a local copy of the pinned wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .apply import apply_patch
from .errors import DirtyTreeError
from .pin import Pin, load_pin
from .seriesfile import Series, load_series
from .tree import STAMP_NAME, UPSTREAM_TESTS_DIR, diff_manifests, manifest
from .wheel import STATE_DIR, obtain_wheel, unpack

STAMP_FORMAT = 1


def series_hash(pin: Pin, series: Series, names: list[str] | tuple[str, ...]) -> str:
    h = hashlib.sha256()
    h.update(f"format={STAMP_FORMAT}\n{pin.requirement}\n{pin.sha256}\n".encode())
    for name in names:
        data = series.path(name).read_bytes()
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def checkout_dirs(pin: Pin) -> list[str]:
    """Top-level dirs of the checkout that the materializer owns."""
    return [*pin.packages, UPSTREAM_TESTS_DIR]


def pristine_dir(root: Path, pin: Pin) -> Path:
    """The unpatched upstream tree kept for check/refresh/differential tests."""
    return Path(root) / STATE_DIR / "pristine" / f"{pin.version}-{pin.sha256[:12]}"


def ensure_pristine(root: Path, pin: Pin, log=print) -> Path:
    dest = pristine_dir(root, pin)
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    wheel = obtain_wheel(pin, root, log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        unpack(wheel, tmp, pin.packages)
        (tmp / ".complete").write_text(pin.sha256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_stamp(dest: Path, pin: Pin) -> dict | None:
    path = Path(dest) / pin.packages[0] / STAMP_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass
class TreeState:
    stamp: dict | None
    expected_hash: str
    edits: list[str]

    @property
    def up_to_date(self) -> bool:
        return self.stamp is not None and self.stamp.get("series_sha256") == self.expected_hash

    @property
    def clean(self) -> bool:
        return not self.edits


def tree_state(root: Path, *, dest: Path | None = None, exclude: tuple[str, ...] = ()) -> TreeState:
    pin, series = load_pin(root), load_series(root)
    dest = Path(dest or root)
    names = [n for n in series.names if n not in exclude]
    stamp = read_stamp(dest, pin)
    edits = []
    if stamp is not None:
        edits = diff_manifests(stamp.get("files", {}), manifest(dest, checkout_dirs(pin)))
    return TreeState(stamp, series_hash(pin, series, names), edits)


def build_tree(root: Path, names: list[str], out: Path, log=print) -> Path:
    """Apply ``names`` (in order) to a copy of the pristine tree at ``out`` (patch layout)."""
    pin, series = load_pin(root), load_series(root)
    pristine = ensure_pristine(root, pin, log)
    out.mkdir(parents=True, exist_ok=True)
    for top in pin.packages:
        shutil.copytree(pristine / top, out / top)
    for name in names:
        apply_patch(name, series.path(name).read_text(encoding="utf-8"), out)
    return out


def patch_tops(pin: Pin) -> list[str]:
    """Top-level dirs of the upstream source layout that patches may touch."""
    return [*pin.packages, "tests"]


def snapshot_checkout(root: Path, pin: Pin, out: Path) -> Path:
    """Copy the checkout's generated dirs to ``out`` in patch layout (upstream_tests -> tests)."""
    out.mkdir(parents=True, exist_ok=True)
    for top in pin.packages:
        if (root / top).is_dir():
            shutil.copytree(root / top, out / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", STAMP_NAME))
    if (root / UPSTREAM_TESTS_DIR).is_dir():
        shutil.copytree(root / UPSTREAM_TESTS_DIR, out / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def write_stamp(tree: Path, pin: Pin, names: list[str], exclude: tuple[str, ...], series_sha: str) -> dict:
    """Record what ``tree`` (checkout layout) was built from, with its file manifest."""
    stamp = {
        "format": STAMP_FORMAT,
        "upstream": pin.requirement,
        "wheel_sha256": pin.sha256,
        "fork_version": pin.fork_version,
        "series_sha256": series_sha,
        "patches": list(names),
        "excluded": list(exclude),
        "files": manifest(tree, checkout_dirs(pin)),
    }
    (tree / pin.packages[0] / STAMP_NAME).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return stamp


def materialize(root: Path, *, force: bool = False, dest: Path | None = None,
                exclude: tuple[str, ...] = (), log=print) -> bool:
    """Make ``dest`` (default: the checkout) hold pristine upstream + the series (minus ``exclude``).

    Returns True if the tree was (re)built, False if it was already up to date.
    """
    root = Path(root).resolve()
    dest = Path(dest or root).resolve()
    pin, series = load_pin(root), load_series(root)
    for name in exclude:
        series.index(name)  # unknown names are an error, not a silent no-op
    names = [n for n in series.names if n not in exclude]
    state = tree_state(root, dest=dest, exclude=exclude)
    if not force:
        if state.up_to_date and state.clean:
            log(f"{dest}: up to date ({pin.fork_version}, {len(names)} patches)")
            return False
        if state.stamp is not None and not state.clean:
            raise DirtyTreeError(
                f"{dest}: the generated tree has edits that are not in any patch:\n  "
                + "\n  ".join(state.edits[:20])
                + "\nRun `modelopt-fork refresh` to keep them, or `modelopt-fork materialize --force` to discard them."
            )
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest))
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=dest))
    try:
        tree = build_tree(root, names, staging / "tree", log)
        if (tree / "tests").exists():
            os.replace(tree / "tests", tree / UPSTREAM_TESTS_DIR)
        write_stamp(tree, pin, names, exclude, state.expected_hash)
        tops = checkout_dirs(pin)
        # Swap: the primary package (which carries the stamp) goes last, so a crash
        # in between leaves a tree whose stamp does not match and is rebuilt next time.
        for top in sorted(tops, key=lambda t: t == pin.packages[0]):
            if (dest / top).exists():
                os.replace(dest / top, trash / top)
            if (staging / "tree" / top).exists():
                os.replace(staging / "tree" / top, dest / top)
        log(f"{dest}: materialized {pin.fork_version} ({len(names)} patches)")
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
