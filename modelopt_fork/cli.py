"""`modelopt-fork`: command-line entry point. Errors users can act on print one message, no traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .series.errors import ForkError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def cmd_materialize(args) -> int:
    from .series.materialize import materialize

    materialize(args.root, force=args.force, dest=args.dest, exclude=tuple(args.exclude), log=_log)
    return 0


def _resolve_patches(root, names) -> list[str]:
    """Series names for ``names``, each a full patch name or a unique prefix (``0010``)."""
    from .series.seriesfile import load_series

    series = list(load_series(root).names)
    out = []
    for name in names:
        hits = [n for n in series if n == name] or [n for n in series if n.startswith(name)]
        if len(hits) != 1:
            raise SystemExit(f"modelopt-fork check: error: {name}: "
                             f"{'matches ' + ', '.join(hits) if hits else 'not in patches/series'}")
        out.append(hits[0])
    return out


def cmd_check(args) -> int:
    from .series.check import check

    # the cheap argument errors first, not after the whole check has run
    if args.green_from is not None and not args.green_from.is_file():
        print(f"check: --green-from {args.green_from}: no such junit report")
        return 2
    patches = _resolve_patches(args.root, args.red_green) if args.red_green else None
    problems = check(args.root, collect_tests=not args.no_tests, log=_log)
    if args.lint:
        from .series.upstream_lint import lint_series

        problems += lint_series(args.root, log=_log)
    for p in problems:
        print(p)
    if problems:
        print(f"check: {len(problems)} problem(s)")
        return 1
    print("check: series, headers and patches are consistent; every patch applies with no fuzz"
          + ("; upstream's lint finds nothing new" if args.lint else ""))
    if args.red_green is not None:
        from .series.redgreen import format_rows, red_green

        rows = red_green(args.root, patches, log=_log, green_from=args.green_from)
        print(format_rows(rows), flush=True)
        if not all(r.ok for r in rows):
            return 1
    return 0


def cmd_refresh(args) -> int:
    from .series.refresh import refresh

    refresh(args.root, args.patch, new=args.new, log=_log)
    return 0


def cmd_status(args) -> int:
    from .series.status import status_lines

    lines, ok = status_lines(args.root)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_table(args) -> int:
    from .series.table import patch_table, update_readme

    if args.check:
        from .series.table import BEGIN, END

        text = (args.root / "README.md").read_text(encoding="utf-8")
        if f"{BEGIN}\n{patch_table(args.root)}\n{END}" not in text:
            print("README.md patch table is out of date: run `modelopt-fork table --write`")
            return 1
        print("README.md patch table is up to date")
        return 0
    if args.write:
        print("README.md updated" if update_readme(args.root) else "README.md already up to date")
        return 0
    print(patch_table(args.root))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="modelopt-fork", description=__doc__)
    ap.add_argument("--root", type=Path, default=None, help="fork checkout (default: found from cwd)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("materialize", help="build modelopt/ from the pinned wheel and patches/series")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date; discards in-place edits")
    p.add_argument("--dest", type=Path, default=None, help="build into DIR instead of the checkout")
    p.add_argument("--exclude", action="append", default=[], metavar="PATCH", help="leave PATCH out (repeatable)")
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("check", help="validate series, headers, Test: ids, and that every patch applies")
    p.add_argument("--no-tests", action="store_true", help="skip collecting the Test: ids with pytest")
    p.add_argument("--lint", action="store_true",
                   help="also lint every file a patch touches with upstream's ruff settings (new findings and "
                        "unformatted files only) and require an upstream-style test (a tests/ file) per patch")
    p.add_argument("--red-green", nargs="*", metavar="PATCH", default=None,
                   help="also prove each patch (or the PATCHes named): its Test: ids fail without it, pass with it")
    p.add_argument("--green-from", type=Path, default=None, metavar="JUNIT.xml",
                   help="with --red-green: take the green outcome of the ids that have items in this junit report "
                        "(pytest -o junit_family=xunit1 --junitxml=..., run on the full series) instead of "
                        "running them again")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("refresh", help="turn in-place edits of modelopt/ into patch files")
    p.add_argument("patch", nargs="?", default=None, help="patch to refresh (default: the last in the series)")
    p.add_argument("--new", metavar="NAME.patch", default=None,
                   help="record edits as a new patch appended to the series")
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("table", help="the README's patch table, generated from the headers")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite it in README.md")
    g.add_argument("--check", action="store_true", help="exit 1 if README.md's table is stale")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("status", help="upstream pin, applied patches, unrefreshed changes")
    p.set_defaults(func=cmd_status)
    _register_command_modules(sub)
    return ap


def _register_command_modules(sub) -> None:
    """Commands living in :mod:`modelopt_fork.commands`: one module each, exposing ``register(sub)``.

    A command that works outside a fork checkout (on an exported checkpoint, a model
    directory) sets ``needs_root=False`` in its defaults.
    """
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .series.pin import find_root

        if args.root:
            args.root = args.root.resolve()
        elif getattr(args, "needs_root", True):
            args.root = find_root()
        return args.func(args)
    except ForkError as e:
        print(f"modelopt-fork {args.cmd}: error: {e}", file=sys.stderr)
        return 2
