"""`modelopt-fork matrix`: the MoE export matrix as a table, for the fork or a pristine upstream."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def register(sub) -> None:
    from ..matrix.axes import CONFIGS
    from ..twin.scenarios import SCENARIOS
    from ..twin.source import BUNDLED

    p = sub.add_parser(
        "matrix", help="run {architecture} x {NVFP4 config} x {scenario}: quantize, export, check",
        description="One row per architecture and scenario, one column per config; each cell is "
                    "'pass' or the failing stage with its first error line below the table. Runs "
                    "with the installed transformers. Exit 1 if any cell fails.")
    p.add_argument("--upstream", metavar="VERSION", default=None,
                   help="run against pristine nvidia-modelopt VERSION instead of the fork")
    p.add_argument("--with", dest="with_patches", action="append", default=[], metavar="PATCH",
                   help="with --upstream (pinned version only): also apply PATCH of our series "
                        "(e.g. 0003-nvfp4-fake-quant-cpu.patch, without which NVFP4 cannot run on CPU)")
    p.add_argument("--arch", action="append", choices=BUNDLED, help="architectures (default: all available)")
    p.add_argument("--cfg", action="append", choices=CONFIGS, help="configs (default: all)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="scenarios (default: all)")
    p.add_argument("--all-archs", action="store_true",
                   help="instead of the bundled configs: every MoE causal-LM type of the installed "
                        "transformers, each twin built from its config class's defaults, scenario full")
    p.add_argument("--type", dest="types", action="append", metavar="MODEL_TYPE",
                   help="with --all-archs: only these model types (default: all found)")
    p.add_argument("--write", type=Path, default=None, metavar="MD",
                   help="with --all-archs: also write the Markdown report (docs/matrix-all-archs.md)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=run, needs_root=False)


def run(args) -> int:
    if args.all_archs:
        return run_all_archs(args)
    if args.types or args.write:
        print("modelopt-fork matrix: --type and --write need --all-archs", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from ..matrix.axes import all_cells, archs, transformers_line
    from ..matrix.table import format_table

    cells = all_cells(args.arch or archs(), args.cfg, args.scenario)
    bar = tqdm(total=len(cells), desc="matrix", unit="cell", file=sys.stderr)

    def progress(r):
        bar.set_postfix_str(f"{r['arch']} {r['cfg']} {r['scenario']}: {'pass' if r['ok'] else 'FAIL'}")
        bar.update()

    with tempfile.TemporaryDirectory(prefix="modelopt-fork-matrix-") as tmp:
        if args.upstream:
            from ..matrix.upstream import run_cells_in, upstream_tree
            from ..series.pin import find_root

            args.root = args.root or find_root()
            tree = upstream_tree(args.root, args.upstream, tuple(args.with_patches),
                                 log=lambda m: print(m, file=sys.stderr))
            results = run_cells_in(tree, args.root, cells, device=args.device, out_dir=Path(tmp),
                                   on_result=progress)
            label = f"pristine nvidia-modelopt {args.upstream}" + (
                f" + {', '.join(args.with_patches)}" if args.with_patches else "")
        else:
            if args.with_patches:
                print("modelopt-fork matrix: --with needs --upstream", file=sys.stderr)
                return 2
            from ..matrix.cell import run_cell

            results = []
            for i, (a, c, s) in enumerate(cells):
                results.append(run_cell(a, c, s, device=args.device, out_dir=Path(tmp) / f"cell{i}").to_dict())
                progress(results[-1])
            import modelopt

            label = f"fork (modelopt {getattr(modelopt, '__version__', '?')})"
    bar.close()
    title = f"MoE export matrix: {label}, transformers {transformers_line()}, {args.device}"
    print(format_table(results, title=title, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"title": title, "results": results}, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


def _upstream(args):
    """(tree, label) for --upstream, or (None, the fork's label)."""
    if not args.upstream:
        import modelopt

        return None, f"fork (modelopt {getattr(modelopt, '__version__', '?')})"
    from ..matrix.upstream import upstream_tree
    from ..series.pin import find_root

    args.root = args.root or find_root()
    tree = upstream_tree(args.root, args.upstream, tuple(args.with_patches), log=lambda m: print(m, file=sys.stderr))
    return tree, f"pristine nvidia-modelopt {args.upstream}" + (
        f" + {', '.join(args.with_patches)}" if args.with_patches else "")


def run_all_archs(args) -> int:
    from tqdm import tqdm

    from ..matrix import all_archs
    from ..matrix.axes import CONFIGS, transformers_line
    from ..matrix.table import format_table
    from ..twin.discover import moe_model_types

    if args.arch or args.scenario:
        print("modelopt-fork matrix: --all-archs takes --type, not --arch; its scenario is full", file=sys.stderr)
        return 2
    if args.with_patches and not args.upstream:
        print("modelopt-fork matrix: --with needs --upstream", file=sys.stderr)
        return 2
    found = moe_model_types(include_dense_by_default=True)
    types = [t for t in found if t.moe_by_default]
    if args.types:
        unknown = sorted(set(args.types) - {t.model_type for t in found})
        if unknown:
            print(f"modelopt-fork matrix: not an MoE causal-LM type of this transformers: {', '.join(unknown)} "
                  f"(found: {', '.join(t.model_type for t in found)})", file=sys.stderr)
            return 2
        types = [t for t in found if t.model_type in args.types]
    configs = args.cfg or CONFIGS
    bar = tqdm(total=len(types) * len(configs), desc="all-archs", unit="cell", file=sys.stderr)

    def progress(r):
        bar.set_postfix_str(f"{r['arch']} {r['cfg']}: {'pass' if r['ok'] else 'FAIL ' + r['stage']}")
        bar.update()

    tree, label = _upstream(args)
    with tempfile.TemporaryDirectory(prefix="modelopt-fork-all-archs-") as tmp:
        prepared, results = all_archs.run(types, configs=configs, device=args.device, work=Path(tmp),
                                          upstream_tree=tree, root=getattr(args, "root", None), on_result=progress)
    bar.close()
    title = f"MoE export matrix, every MoE type: {label}, transformers {transformers_line()}, {args.device}"
    print(format_table(results, title=title, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"title": title, "prepared": prepared, "results": results}, indent=1) + "\n")
    if args.write:
        dense = [t.model_type for t in found if not t.moe_by_default and not args.types]
        args.write.write_text(all_archs.markdown_report(prepared, results, title=title, label=label,
                                                        command=all_archs.command_line(), dense_by_default=dense))
    return 0 if all(r["ok"] for r in results) else 1
