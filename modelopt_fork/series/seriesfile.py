"""patches/series: quilt order, one patch file name per line, ``#`` comments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SeriesError

PATCH_DIR = "patches"
SERIES_FILE = "series"


@dataclass(frozen=True)
class Series:
    root: Path
    names: tuple[str, ...]

    @property
    def patch_dir(self) -> Path:
        return self.root / PATCH_DIR

    def path(self, name: str) -> Path:
        return self.patch_dir / name

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SeriesError(f"{name}: not in {PATCH_DIR}/{SERIES_FILE}") from None


def parse_series_text(text: str) -> list[tuple[int, str]]:
    """(line number, patch name) for each entry; comments and blank lines dropped."""
    entries = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1:
            raise SeriesError(
                f"{PATCH_DIR}/{SERIES_FILE}:{lineno}: expected one patch name, got {line!r} "
                "(patch options such as -p are not supported: every patch is -p1)"
            )
        entries.append((lineno, line))
    return entries


def load_series(root: Path) -> Series:
    path = Path(root) / PATCH_DIR / SERIES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SeriesError(f"{path}: no series file") from None
    return Series(Path(root), tuple(name for _, name in parse_series_text(text)))


def series_problems(root: Path) -> list[str]:
    """Disagreements between patches/series and patches/*.patch (empty list = consistent)."""
    patch_dir = Path(root) / PATCH_DIR
    path = patch_dir / SERIES_FILE
    problems = []
    entries = parse_series_text(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    for lineno, name in entries:
        if name in seen:
            problems.append(f"{PATCH_DIR}/{SERIES_FILE}:{lineno}: {name} listed twice (first on line {seen[name]})")
        else:
            seen[name] = lineno
        if not (patch_dir / name).is_file():
            problems.append(f"{PATCH_DIR}/{SERIES_FILE}:{lineno}: {name} does not exist")
    for f in sorted(patch_dir.glob("*.patch")):
        if f.name not in seen:
            problems.append(f"{PATCH_DIR}/{f.name}: not listed in {PATCH_DIR}/{SERIES_FILE} (unused patch)")
    return problems


def append_to_series(root: Path, name: str) -> None:
    path = Path(root) / PATCH_DIR / SERIES_FILE
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    path.write_text(text + name + "\n", encoding="utf-8")
