"""`modelopt-fork validate CHECKPOINT_DIR`: check an exported NVFP4 checkpoint against what runtimes load."""

from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("validate", help="check an exported NVFP4 checkpoint against the runtimes' contract",
                       description="One line per violation (tensor, rule, found vs expected), then a summary. "
                                   "Exit 0 when clean, 1 on any violation, 2 when the directory cannot be read "
                                   "(malformed JSON or shard, a path outside it, not a regular file: one line). "
                                   "The rules and their reasons: docs/checkpoint-rules.md.")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_DIR",
                   help="directory written by export_hf_checkpoint")
    p.add_argument("--runtime", choices=["all", "vllm", "tensorrt-llm"], default="all",
                   help="the runtime(s) the checkpoint must load in (default: all: vLLM and TensorRT-LLM; "
                        "tensorrt-llm accepts its NVFP4_AWQ form with AWQ pre_quant_scale tensors)")
    p.set_defaults(func=run, needs_root=False)


def run(args) -> int:
    from ..checkpoint import LoadError, validate_checkpoint
    from ..checkpoint.rules import RUNTIMES, rules_for

    runtimes = RUNTIMES if args.runtime == "all" else (args.runtime,)
    try:
        violations = validate_checkpoint(args.checkpoint, runtimes)
    except LoadError as e:
        print(f"modelopt-fork validate: cannot read checkpoint: {e}", file=sys.stderr)
        return 2
    for v in violations:
        print(v.format())
    if violations:
        rules = sorted({v.rule for v in violations})
        print(f"validate: {len(violations)} violation(s) of {len(rules)} rule(s) ({', '.join(rules)}) "
              f"in {args.checkpoint}")
        return 1
    print(f"validate: {args.checkpoint} satisfies all {len(rules_for(runtimes))} rules "
          f"({' and '.join(runtimes)})")
    return 0
