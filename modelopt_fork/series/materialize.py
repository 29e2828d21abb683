"""Build the generated tree: verified wheel -> pristine tree -> series applied -> atomic swap.

* idempotent: a stamp (upstream version, wheel hash, series hash, file manifest)
  says whether the tree already is what the series produces;
* atomic: the series is applied in a staging dir next to the destination, and
  only a fully patched tree is renamed into place; an error during the swap puts the
  previous tree back, and a crash during it leaves a marker (``SWAP_MARKER``) that makes
  the tree read as incomplete (rebuilt by the next run, refused by ``refresh``);
* exclusive: one materialize/refresh at a time per checkout (``locked``);
* verified: the pristine cache is checked against the file hashes recorded when it was
  unpacked, and unpacked again if it differs;
* offline: $MODELOPT_FORK_WHEEL points at a local copy of the pinned wheel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .apply import apply_patch
from .errors import DirtyTreeError, ForkError
from .pin import Pin, load_pin
from .seriesfile import Series, load_series
from .tree import STAMP_NAME, UPSTREAM_TESTS_DIR, diff_manifests, manifest
from .wheel import STATE_DIR, obtain_wheel, unpack

STAMP_FORMAT = 1
PRISTINE_RECORD = ".complete"  # {"wheel_sha256": ..., "files": manifest} of the pristine tree
SWAP_MARKER = ".fork-swap-incomplete"  # in the destination while its top dirs are being swapped
_LEFTOVER_PREFIXES = (".staging-", ".trash-")
_held: set[Path] = set()  # locks this process holds (``locked`` is reentrant)


def _flock(path: Path, *, wait: bool):
    """An exclusive ``fcntl.flock`` on ``path`` for a ``with`` block; None if busy and not ``wait``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")  # noqa: SIM115 (closed by the returned context)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        f.close()
        return None
    return contextlib.closing(f)


@contextlib.contextmanager
def locked(root: Path):
    """Hold the checkout's lock (``.modelopt-fork/lock``): one materialize/refresh at a time."""
    path = Path(root).resolve() / STATE_DIR / "lock"
    if path in _held:
        yield
        return
    lock = _flock(path, wait=False)
    if lock is None:
        raise ForkError(f"{root}: another modelopt-fork materialize or refresh is running on this checkout "
                        f"(it holds {path}); wait for it to finish and run again")
    with lock:
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)


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


def _pristine_problems(dest: Path, pin: Pin) -> list[str]:
    """How the pristine tree at ``dest`` differs from the hashes recorded when it was unpacked."""
    try:
        record = json.loads((dest / PRISTINE_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return ["no hash record"]
    if not isinstance(record, dict) or record.get("wheel_sha256") != pin.sha256:
        return ["hash record of another wheel"]
    return diff_manifests(record.get("files") or {}, manifest(dest, pin.packages))


def _remove_unpacks(parent: Path) -> None:
    """Remove what interrupted unpacks left in the pristine cache (call with its lock held)."""
    for stale in parent.glob(".unpack-*"):
        shutil.rmtree(stale, ignore_errors=True)


def ensure_pristine(root: Path, pin: Pin, log=print) -> Path:
    """The verified pristine tree of ``pin`` (unpacked from the verified wheel when missing or altered)."""
    dest = pristine_dir(root, pin)
    with _flock(dest.parent / ".lock", wait=True):
        if dest.is_dir():
            problems = _pristine_problems(dest, pin)
            if not problems:
                return dest
            log(f"{dest}: pristine cache does not match its recorded hashes ({', '.join(problems[:3])}"
                f"{', ...' if len(problems) > 3 else ''}); unpacking the wheel again")
        _remove_unpacks(dest.parent)
        wheel = obtain_wheel(pin, root, log)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
        try:
            unpack(wheel, tmp, pin.packages)
            record = {"wheel_sha256": pin.sha256, "files": manifest(tmp, pin.packages)}
            (tmp / PRISTINE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
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
    incomplete: bool = False  # a swap was interrupted: part old tree, part new; rebuild it

    @property
    def up_to_date(self) -> bool:
        return (not self.incomplete and self.stamp is not None
                and self.stamp.get("series_sha256") == self.expected_hash)

    @property
    def clean(self) -> bool:
        return not self.edits


def tree_state(root: Path, *, dest: Path | None = None, exclude: tuple[str, ...] = ()) -> TreeState:
    pin, series = load_pin(root), load_series(root)
    dest = Path(dest or root)
    names = [n for n in series.names if n not in exclude]
    stamp = read_stamp(dest, pin)
    incomplete = (dest / SWAP_MARKER).exists()
    edits = []
    if stamp is not None and not incomplete:  # a half-swapped tree's differences are not edits
        edits = diff_manifests(stamp.get("files", {}), manifest(dest, checkout_dirs(pin)))
    return TreeState(stamp, series_hash(pin, series, names), edits, incomplete)


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


def _swap(dest: Path, new: Path, trash: Path, tops: list[str]) -> None:
    """Move each of ``tops`` from ``new`` into ``dest`` (the old one to ``trash``), all or nothing.

    An error puts back what was moved. A crash leaves ``SWAP_MARKER`` in ``dest``: the tree
    then reads as incomplete and the next materialize rebuilds it.
    """
    marker = dest / SWAP_MARKER
    marker.write_text(f"{new}\n")
    done: list[tuple[Path, Path]] = []
    try:
        for top in tops:
            for src, dst in ((dest / top, trash / top), (new / top, dest / top)):
                if src.exists():
                    os.replace(src, dst)
                    done.append((src, dst))
    except BaseException as e:
        for src, dst in reversed(done):
            os.replace(dst, src)
        marker.unlink()
        if isinstance(e, Exception):
            raise ForkError(f"{dest}: swapping in the new tree failed ({e}); the previous tree is back "
                            "in place") from e
        raise
    marker.unlink()


def _clean_leftovers(root: Path, pin: Pin, dest: Path, log) -> None:
    """Remove the staging, trash and unpack dirs of interrupted runs (call with the checkout's lock held)."""
    for p in sorted(dest.glob(".*")) if dest.is_dir() else []:
        if p.name.startswith(_LEFTOVER_PREFIXES) and p.is_dir():
            log(f"{dest}: removing {p.name}, left by an interrupted run")
            shutil.rmtree(p, ignore_errors=True)
    cache = pristine_dir(root, pin).parent
    if cache.is_dir():
        with _flock(cache / ".lock", wait=True):
            _remove_unpacks(cache)


def materialize(root: Path, *, force: bool = False, dest: Path | None = None,
                exclude: tuple[str, ...] = (), log=print) -> bool:
    """Make ``dest`` (default: the checkout) hold pristine upstream + the series (minus ``exclude``).

    Returns True if the tree was (re)built, False if it was already up to date.
    """
    root = Path(root).resolve()
    with locked(root):
        return _materialize(root, force=force, dest=Path(dest or root).resolve(), exclude=exclude, log=log)


def _materialize(root: Path, *, force: bool, dest: Path, exclude: tuple[str, ...], log) -> bool:
    pin, series = load_pin(root), load_series(root)
    for name in exclude:
        series.index(name)  # unknown names are an error, not a silent no-op
    names = [n for n in series.names if n not in exclude]
    _clean_leftovers(root, pin, dest, log)
    state = tree_state(root, dest=dest, exclude=exclude)
    if state.incomplete:
        log(f"{dest}: an interrupted materialize left a half-swapped tree; rebuilding it")
    elif not force:
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
        # the primary package (which carries the stamp) goes last
        _swap(dest, tree, trash, sorted(checkout_dirs(pin), key=lambda t: t == pin.packages[0]))
        log(f"{dest}: materialized {pin.fork_version} ({len(names)} patches)")
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not (dest / SWAP_MARKER).exists():  # a failed rollback: the old tree stays in trash
            shutil.rmtree(trash, ignore_errors=True)
