"""Turn in-place edits of the generated tree back into patch files (quilt-style refresh).

``refresh`` (default: the last patch in the series) rewrites that patch's diff
from the checkout, keeping its header byte for byte. The diff is computed as
(pristine + patches before P) -> (checkout with patches after P reverse-applied),
so it only ever contains P's own change. ``refresh --new NAME`` records edits on
top of the whole series as a new patch with a header template. Running refresh
on an unchanged tree leaves every patch file byte-identical.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .apply import apply_patch
from .diff import diff_trees
from .errors import DirtyTreeError, SeriesError
from .header import header_template, split_patch
from .materialize import (
    build_tree,
    checkout_dirs,
    locked,
    patch_tops,
    series_hash,
    snapshot_checkout,
    tree_state,
    write_stamp,
)
from .pin import load_pin
from .seriesfile import append_to_series, load_series
from .tree import iter_files


def _git_identity() -> str:
    def get(key: str) -> str:
        p = subprocess.run(["git", "config", key], capture_output=True, text=True)
        return p.stdout.strip()

    name, email = get("user.name"), get("user.email")
    return f"{name} <{email}>" if name and email else "TODO Your Name <you@example.com>"


def refresh(root: Path, patch: str | None = None, *, new: str | None = None, log=print) -> list[str]:
    """Refresh one patch (or create ``new``). Returns the names of patch files rewritten."""
    root = Path(root).resolve()
    with locked(root):
        return _refresh(root, patch, new=new, log=log)


def _refresh(root: Path, patch: str | None, *, new: str | None, log) -> list[str]:
    pin, series = load_pin(root), load_series(root)
    state = tree_state(root)
    if state.incomplete:
        raise DirtyTreeError(f"{root}: the tree is incomplete (an interrupted materialize); its differences "
                             "are not edits. Run `modelopt-fork materialize` to rebuild it.")
    if state.stamp is None:
        raise DirtyTreeError(f"{root}: no materialized tree (run `modelopt-fork materialize`)")
    if state.stamp.get("excluded") or list(state.stamp.get("patches", [])) != list(series.names):
        raise DirtyTreeError(
            f"{root}: the tree was materialized from a different series "
            f"({state.stamp.get('patches')}) than patches/series ({list(series.names)}); "
            "refresh cannot tell which patch your edits belong to. Save your edits, run "
            "`modelopt-fork materialize --force`, and redo them."
        )
    stamped = {k.split("/", 1)[0] for k in state.stamp.get("files", {})}
    gone = [t for t in checkout_dirs(pin) if t in stamped and not iter_files(root / t)]
    if gone:  # a missing generated dir, not an edit: never a patch that deletes all of it
        raise DirtyTreeError(
            f"{root}: refusing to write a patch that deletes all of {', '.join(t + '/' for t in gone)}: "
            "a generated directory is missing from the checkout. Restore it (`modelopt-fork materialize "
            "--force` rebuilds the tree, discarding unrefreshed edits) and refresh again."
        )
    tops = patch_tops(pin)
    written: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        target = snapshot_checkout(root, pin, tmp / "target")
        if new is not None:
            if not new.endswith(".patch") or "/" in new:
                raise SeriesError(f"{new}: a new patch name must be a file name ending in .patch")
            if new in series.names or series.path(new).exists():
                raise SeriesError(f"patches/{new} already exists")
            base = build_tree(root, list(series.names), tmp / "base", log)
            diff = diff_trees(base, target, tops)
            if not diff:
                raise SeriesError("nothing to refresh: the tree equals the materialized series")
            series.path(new).write_text(header_template(pin.requirement, _git_identity()) + diff, encoding="utf-8")
            append_to_series(root, new)
            written.append(new)
            log(f"patches/{new}: created from {diff.count('diff --git')} changed file(s); fill in its header")
        else:
            if not series.names:
                raise SeriesError("the series is empty: use `modelopt-fork refresh --new NAME.patch`")
            name = patch or series.names[-1]
            i = series.index(name)
            for later in reversed(series.names[i + 1 :]):
                try:
                    apply_patch(later, series.path(later).read_text(encoding="utf-8"), target, reverse=True)
                except Exception as e:
                    raise SeriesError(
                        f"cannot refresh {name}: the tree's edits overlap the later patch {later} ({e}). "
                        f"Refresh {later} first, or move the edit into it."
                    ) from None
            base = build_tree(root, list(series.names[:i]), tmp / "base", log)
            diff = diff_trees(base, target, tops)
            if not diff:
                raise SeriesError(f"refreshing {name} would leave it empty; remove it from patches/series instead")
            old = series.path(name).read_text(encoding="utf-8")
            header, _ = split_patch(old)
            if header + diff != old:
                series.path(name).write_text(header + diff, encoding="utf-8")
                written.append(name)
                log(f"patches/{name}: refreshed")
            else:
                log(f"patches/{name}: unchanged")
    # The checkout now is exactly what the series produces: record that.
    series = load_series(root)
    write_stamp(root, pin, list(series.names), (), series_hash(pin, series, series.names))
    return written
