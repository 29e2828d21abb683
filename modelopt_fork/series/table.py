"""The README's patch table, generated from the patch headers (`modelopt-fork table`)."""

from __future__ import annotations

import re
from pathlib import Path

from .header import parse_patch
from .seriesfile import load_series

BEGIN, END = "<!-- patch-table -->", "<!-- /patch-table -->"


def patch_table(root: Path) -> str:
    series = load_series(root)
    rows = ["| # | patch | what | forwarded |", "|---|---|---|---|"]
    for i, name in enumerate(series.names, start=1):
        p = parse_patch(name, series.path(name).read_text(encoding="utf-8"))
        summary = str(p.fields.get("Description", "")).splitlines()[0].strip()
        fwd = p.get("Forwarded")
        fwd_cell = fwd
        if fwd.startswith("http"):
            kind, number = fwd.rstrip("/").rsplit("/", 2)[-2:]
            fwd_cell = f"[{kind} #{number}]({fwd})"
        rows.append(f"| {i} | [`{name}`](patches/{name}) | {summary} | {fwd_cell} |")
    return "\n".join(rows)


def update_readme(root: Path) -> bool:
    """Rewrite the table between the markers in README.md. True if the file changed."""
    path = Path(root) / "README.md"
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path}: no {BEGIN} ... {END} markers")
    new = pattern.sub(lambda _: f"{BEGIN}\n{patch_table(root)}\n{END}", text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text
