"""`modelopt-fork preflight [MODEL] --qformat Q`: calibrate -> export -> validate -> reference on a tiny twin.

Exit 0: every stage passed; 1: the model fails a stage (the report says which); 2: bad input
(no config, a config that cannot be shrunk or whose twin is over the parameter budget, bad options).
"""

from __future__ import annotations

import argparse


def _experts(value: str):
    if value == "real":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a positive number or 'real'")
    return n


def register(sub) -> None:
    from ..preflight import QFORMATS
    from ..twin.source import BUNDLED, DEFAULT

    p = sub.add_parser(
        "preflight", help="will this MoE export? tiny twin: calibrate, export, validate, reference runtime",
        description="MODEL is a Hugging Face model directory (only config.json is read) or a bundled "
                    f"name ({', '.join(BUNDLED)}; default {DEFAULT}). Exit 0 if every stage passes, 1 if "
                    "a stage fails, 2 for bad input.")
    p.add_argument("model", nargs="?", default=DEFAULT)
    p.add_argument("--qformat", choices=sorted(QFORMATS), default="nvfp4_awq_lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--experts", type=_experts, default=None,
                   help="experts per MoE block in the twin: a number or 'real' (default: max(4, 2*top_k))")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run, needs_root=False)


def run(args) -> int:
    import sys

    from ..preflight import format_report, preflight
    from ..twin.build import twin_config

    twin_config(args.model, num_experts=args.experts)  # bad input: its ForkError is exit 2, before any stage
    res = preflight(args.model, args.qformat, device=args.device, num_experts=args.experts, seed=args.seed,
                    progress=sys.stderr.isatty())  # a bar only on a terminal: no carriage returns in CI logs
    print(format_report(res, args.model, args.qformat))
    return 0 if res.ok else 1
