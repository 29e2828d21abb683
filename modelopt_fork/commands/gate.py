"""`modelopt-fork gate`: the version gate -- the matrix against several upstream releases and the fork."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

RELEASES = ["0.43.0", "0.44.0", "0.45.0", "0.46.1", "0.47.0"]
CPU_PATCH = "0003-nvfp4-fake-quant-cpu.patch"
GATE_SCENARIOS = ["full", "dark-experts", "per-channel-amax"]


def register(sub) -> None:
    p = sub.add_parser(
        "gate", help="run the export matrix against upstream releases and the fork; which failure reproduces where",
        description="For each release: a pristine tree (on CPU plus patch 0003, without which upstream NVFP4 "
                    "cannot run on CPU at all; on CUDA nothing) runs the matrix cells with the checkpoint "
                    "validator; then the fork. Prints a summary (failure classes per release) and the "
                    "per-release tables. Exit 1 if a fork cell fails.")
    p.add_argument("--versions", nargs="+", default=RELEASES, metavar="V")
    p.add_argument("--device", default="cpu")
    p.add_argument("--scenario", action="append", default=None, help=f"default: {', '.join(GATE_SCENARIOS)}")
    p.add_argument("--arch", action="append", default=None)
    p.add_argument("--cfg", action="append", default=None)
    p.add_argument("--write", type=Path, default=None, help="write the Markdown report to this file")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--jobs", type=int, default=1, help="releases run side by side (one subprocess each)")
    p.set_defaults(func=run)


def _summary(label: str, results: list[dict]) -> list[str]:
    classes: dict[str, list[str]] = {}
    for r in results:
        if not r["ok"]:
            classes.setdefault(f"{r['stage']}: {r['error']}", []).append(f"{r['arch']}/{r['cfg']}/{r['scenario']}")
    lines = [f"| {label} | {sum(r['ok'] for r in results)}/{len(results)} | "
             + ("<br>".join(f"{len(v)}x `{k[:160]}`" for k, v in classes.items()) or "none") + " |"]
    return lines


def run(args) -> int:
    from tqdm import tqdm

    from ..matrix.axes import all_cells, archs, transformers_line
    from ..matrix.table import format_table
    from ..matrix.upstream import run_cells_in, upstream_tree
    from ..series.errors import ForkError
    from ..series.materialize import materialize

    cells = all_cells(args.arch or archs(), args.cfg, args.scenario or GATE_SCENARIOS)
    patches = (CPU_PATCH,) if args.device == "cpu" else ()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    targets = [(v, True) for v in args.versions] + [("fork", False)]
    bar = tqdm(total=len(cells) * len(targets), desc="gate", unit="cell", file=sys.stderr)
    materialize(args.root, log=log)  # the fork's own tree, up to date

    def one(i, version, upstream, tmp):
        label = (f"nvidia-modelopt {version}" + (f" + {patches[0][:4]}" if patches else "")) if upstream else "fork"
        try:
            tree = upstream_tree(args.root, version, patches, log=log) if upstream else args.root
            res = run_cells_in(tree, args.root, cells, device=args.device, out_dir=Path(tmp) / str(i),
                               stages=("validate",), on_result=lambda r: bar.update())
            return label, res, ""
        except ForkError as e:
            bar.update(len(cells))
            return label, None, " ".join(str(e).strip().splitlines()[:2])[:200]

    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix="modelopt-fork-gate-") as tmp:
        # trees first, one at a time (they share the cache), then the cells side by side
        for version, upstream in targets:
            if upstream:
                try:
                    upstream_tree(args.root, version, patches, log=log)
                except ForkError:
                    pass  # reported by one() below
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = list(pool.map(lambda a: one(*a, tmp), [(i, v, u) for i, (v, u) in enumerate(targets)]))
    bar.close()
    head = (f"# Version gate: transformers {transformers_line()}, {args.device}\n\n"
            f"Cells: {len(cells)} (architectures x configs x scenarios {', '.join(args.scenario or GATE_SCENARIOS)});"
            " stages build, calibrate, forward, export, check, validate.\n")
    if patches:
        head += (f"On CPU every upstream release runs with patch {patches[0]} applied (upstream NVFP4 fake "
                 "quant is CUDA-only: without it every cell fails with 'amax must be a CUDA tensor').\n")
    out = [head, "| release | cells pass | failures (count x first line) |", "|---|---|---|"]
    for label, res, err in runs:
        out += _summary(label, res) if res is not None else [f"| {label} | - | could not run: `{err}` |"]
    for label, res, _ in runs:
        if res:
            out += ["", format_table(res, title=f"## {label}", markdown=True)]
    text = "\n".join(out) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([{"label": label, "results": res, "error": err} for label, res, err in runs],
                                        indent=1) + "\n")
    fork = runs[-1][1]
    return 0 if fork and all(r["ok"] for r in fork) else 1
