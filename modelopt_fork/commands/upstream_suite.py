"""`modelopt-fork upstream-suite`: upstream's tests for the modules the series touches, pristine vs the fork."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "upstream-suite", help="run upstream's tests (from an upstream checkout) on pristine and the fork; "
                               "report outcome differences per test id",
        description="Copies DIR's tests/ (plus pyproject.toml) once per side, lays the series' upstream-style "
                    "tests (upstream_tests/) over it, and runs pytest with modelopt from the pristine tree "
                    "(the pinned wheel, 0 patches) and from the fork's materialized tree. Exit 1 on a regression "
                    "(an id passing on pristine and not on the fork) or a patch test not passing on the fork.")
    p.add_argument("--source", type=Path, required=True, metavar="DIR",
                   help="an upstream Model-Optimizer checkout (at the pinned release's tag or nearest commit)")
    p.add_argument("--paths", nargs="+", default=None, metavar="PATH",
                   help="test paths relative to DIR (default: tests/unit/<module> (tests/gpu/<module> with --gpu) "
                        "for each module the series' patches change)")
    p.add_argument("--gpu", action="store_true",
                   help="the GPU dirs (tests/gpu/...), one pytest process per test file, no -n")
    p.add_argument("--coverage", action="store_true",
                   help="measure on the fork side which statements the patches add are executed (coverage.py)")
    p.add_argument("-n", "--workers", default="auto",
                   help="pytest-xdist workers per side (not with --gpu; 0: none; default auto)")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --gpu: test files run side by side (separate processes; default 1)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="kill a pytest process after S seconds (its file/paths then count as an error)")
    p.add_argument("--side", choices=["both", "pristine", "fork"], default="both",
                   help="run one side only (e.g. to split a GPU run into two calls; no comparison then)")
    p.add_argument("--pristine-tree", type=Path, default=None, metavar="DIR",
                   help="a pristine tree holding modelopt/ (default: the verified pristine cache, built "
                        "from the pinned wheel)")
    p.add_argument("--pristine-from", type=Path, default=None, metavar="JSON",
                   help="take the pristine outcomes from the upstream-suite.json of an earlier --side pristine run "
                        "of the same paths instead of running that side")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write upstream-suite.json (every id's outcome per side), junit-<side>.xml, "
                        "pytest-<side>.log and report.txt there")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelopt_fork.series.upstream_suite import format_result, upstream_suite

    sides = ("pristine", "fork") if args.side == "both" else (args.side,)
    res = upstream_suite(args.root, args.source, paths=args.paths, gpu=args.gpu, coverage=args.coverage,
                         workers=None if args.gpu else args.workers, jobs=args.jobs, timeout=args.timeout,
                         sides=sides, pristine_tree=args.pristine_tree, pristine_from=args.pristine_from,
                         out=args.out,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    text = format_result(res)
    print(text, flush=True)
    if args.out is not None:
        (args.out / "report.txt").write_text(text + "\n", encoding="utf-8")
    return 0 if res.ok else 1
