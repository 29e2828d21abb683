"""docs/checkpoint-rules.md, generated from :data:`.rules.RULES`.

``python -m modelopt_fork.checkpoint.docs --write`` rewrites it; without ``--write`` it prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DOC = Path("docs") / "checkpoint-rules.md"

HEADER = """\
# NVFP4 checkpoint rules

Generated from `modelopt_fork/checkpoint/rules.py` by
`python -m modelopt_fork.checkpoint.docs --write`; do not edit by hand
(`tests/checkpoint/test_validate.py` fails when this file is stale).

`modelopt-fork validate CHECKPOINT_DIR` checks an exported checkpoint against these rules and
prints one line per violation: tensor (or `file.json:key`), rule id, what it found and what
the runtimes expect. Exit code 0 when clean, 1 on any violation, 2 when the directory cannot
be read as a checkpoint (unreadable or over-deep JSON, a shard safetensors refuses, an index value
that is not a plain file name, a file outside the directory by `..`, an absolute name or a
symlink, a file that is not a regular file such as a FIFO): one line on stderr, no traceback.
Each shard is opened once and tensors are read only when a rule needs their values, then
dropped (docs/reliability.md, `## validate`: time and memory on a Qwen3-30B-A3B-size checkpoint).

Each rule names the runtimes it is about. By default a checkpoint must load in both vLLM and
TensorRT-LLM (`--runtime all`); `--runtime tensorrt-llm` accepts TensorRT-LLM's NVFP4_AWQ form
(AWQ `pre_quant_scale` tensors kept on the linears, written with the AWQ option
`fold_pre_quant_scale=False`), which vLLM 0.25.1 refuses. The vLLM rules were checked against a
real vLLM 0.25.1 on an H200 (docs/vllm-stage.md): every checkpoint they pass loads and agrees
with the fake-quantized model, and the two checkpoints vLLM refused or computed wrongly break
`pre-quant-scale-vllm` / `quant-algo-vllm` and `input-scale-normal`.

Sources are files of vLLM, TensorRT-LLM and compressed-tensors as read for this fork (named so
they can be re-read when those projects move). Structure is found from names and shapes, not
per architecture: experts are `<container>.experts.<i>.<proj>`, fused groups are sibling
`q_proj/k_proj/v_proj`, `gate_proj/up_proj`, `w1/w3` under any parent, routers are the 2-D
`*gate*`/`*router*` weights beside an `experts` container with one row per expert.
"""


def render() -> str:
    from .rules import RULES

    lines = [HEADER, f"{len(RULES)} rules.", "", "| rule | runtimes | why | read in |", "|---|---|---|---|"]
    for r in RULES:
        sources = "<br>".join(f"`{s}`" for s in r.sources)
        lines.append(f"| `{r.id}` | {', '.join(r.runtimes)} | {r.why} | {sources} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"rewrite {DOC} (default: print it)")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        (args.root / DOC).parent.mkdir(parents=True, exist_ok=True)
        (args.root / DOC).write_text(text, encoding="utf-8")
        print(f"wrote {args.root / DOC}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
