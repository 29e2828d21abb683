"""`modelopt-fork rebase --to VERSION`: grade the series against another upstream release and move onto it."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("rebase", help="move the series onto another upstream release (pin + refreshed patches)")
    p.add_argument("--to", required=True, metavar="VERSION", help="upstream release, e.g. 0.48.0")
    p.add_argument("--wheel", type=Path, default=None, metavar="PATH",
                   help="use this local wheel of that release instead of downloading it with pip")
    p.add_argument("--dry-run", action="store_true", help="report per patch, write nothing")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelopt_fork.series.rebase import format_report, rebase

    report = rebase(args.root, args.to, wheel=args.wheel, dry_run=args.dry_run,
                    log=lambda m: print(m, file=sys.stderr))
    print(format_report(report, args.dry_run))
    return 1 if report.conflicts else 0
