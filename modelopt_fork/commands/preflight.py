"""`modelopt-fork preflight [MODEL] --qformat Q`: calibrate -> export -> validate -> reference on a tiny twin."""

from __future__ import annotations


def register(sub) -> None:
    from ..preflight import QFORMATS
    from ..twin.source import BUNDLED, DEFAULT

    p = sub.add_parser(
        "preflight", help="will this MoE export? tiny twin: calibrate, export, validate, reference runtime",
        description="MODEL is a Hugging Face model directory (only config.json is read) or a bundled "
                    f"name ({', '.join(BUNDLED)}; default {DEFAULT}). Exit 0 only if every stage passes.")
    p.add_argument("model", nargs="?", default=DEFAULT)
    p.add_argument("--qformat", choices=sorted(QFORMATS), default="nvfp4_awq_lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--experts", default=None,
                   help="experts per MoE block in the twin: a number or 'real' (default: max(4, 2*top_k))")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run, needs_root=False)


def run(args) -> int:
    import sys

    from ..preflight import format_report, preflight

    experts = args.experts if args.experts in (None, "real") else int(args.experts)
    res = preflight(args.model, args.qformat, device=args.device, num_experts=experts, seed=args.seed,
                    progress=sys.stderr.isatty() or True)
    print(format_report(res, args.model, args.qformat))
    return 0 if res.ok else 1
