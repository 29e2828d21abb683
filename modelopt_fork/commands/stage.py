"""`modelopt-fork stage`: each patch as an upstream PR (git mbox + Markdown description)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("stage", help="write each patch as a git format-patch mbox plus a PR description")
    p.add_argument("patches", nargs="*", metavar="PATCH", help="patches to stage (default: the whole series)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write NAME.mbox and NAME.md")
    p.add_argument("--no-run-tests", dest="run_tests", action="store_false",
                   help="do not run the tests (faster; the description then has no figures)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modelopt_fork.series.stage import stage

    results = stage(args.root, args.patches or None, args.out, run_tests=args.run_tests,
                    log=lambda m: print(m, file=sys.stderr))
    for st in results:
        if st.skipped:
            print(f"skip   {st.name}: {st.skipped}")
            continue
        deps = f" (builds on {', '.join(st.depends_on)})" if st.depends_on else ""
        print(f"staged {st.name}{deps}\n       {st.mbox}\n       {st.markdown}")
        for r in st.runs:
            print(f"       {r.what} [{r.tree}]: {r.outcome.text()}")
        for note in st.notes:
            print(f"       note: {note}")
    return 0
