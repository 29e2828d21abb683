"""`modelopt-fork status`: what is pinned, what is applied, and whether the tree has unrecorded changes."""

from __future__ import annotations

from pathlib import Path

from .header import parse_patch
from .materialize import tree_state
from .pin import load_pin
from .seriesfile import load_series


def status_lines(root: Path) -> tuple[list[str], bool]:
    """(report lines, ok). ok is False if the tree is missing, stale or has unrefreshed changes."""
    root = Path(root).resolve()
    pin, series = load_pin(root), load_series(root)
    st = tree_state(root)
    lines = [
        f"upstream:  {pin.requirement} (sha256 {pin.sha256[:16]}...)",
        f"fork:      {pin.distribution} {pin.fork_version}",
        f"series:    {len(series.names)} patch(es) in patches/series",
    ]
    applied = set(st.stamp.get("patches", [])) if st.stamp else set()
    for name in series.names:
        p = parse_patch(name, series.path(name).read_text(encoding="utf-8")) if series.path(name).is_file() else None
        mark = "applied" if name in applied else "NOT applied"
        fwd = p.get("Forwarded") if p else "?"
        lines.append(f"  [{mark}] {name}  (Forwarded: {fwd or '?'})")
    ok = True
    if st.incomplete:
        lines.append("tree:      incomplete: a materialize was interrupted while swapping the tree in "
                     "(run `modelopt-fork materialize` to rebuild it)")
        ok = False
    elif st.stamp is None:
        lines.append("tree:      not materialized (run `modelopt-fork materialize`)")
        ok = False
    else:
        if not st.up_to_date:
            lines.append("tree:      stale: patches/ changed since the tree was materialized "
                         "(run `modelopt-fork materialize`)")
            ok = False
        if st.edits:
            lines.append(f"tree:      {len(st.edits)} file(s) modified in place, not refreshed into patches:")
            lines += [f"  {e}" for e in st.edits[:50]]
            lines.append("           run `modelopt-fork refresh` (or `refresh --new NAME.patch`)")
            ok = False
        if ok:
            lines.append(f"tree:      clean, matches the series ({root / pin.packages[0]})")
    return lines, ok
