"""Subprocess entry: run matrix cells with whatever ``modelopt`` is first on sys.path.

``python -m modelopt_fork.matrix.worker --cells JSON --device D --out DIR`` prints one
``CELL {json}`` line per cell. With MODELOPT_FORK_TREE set, modelopt must import from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stages", default="validate,reference", help="optional stages to run (comma list)")
    args = ap.parse_args(argv)

    import modelopt

    want = os.environ.get("MODELOPT_FORK_TREE")
    if want and not Path(modelopt.__file__).resolve().is_relative_to(Path(want).resolve()):
        print(f"MODELOPT_FORK_TREE={want} but modelopt imports from {modelopt.__file__}", file=sys.stderr)
        return 3
    from .cell import run_cell

    for i, (arch, cfg, scenario) in enumerate(json.loads(args.cells)):
        stages = tuple(x for x in args.stages.split(",") if x)
        r = run_cell(arch, cfg, scenario, device=args.device, out_dir=args.out / f"cell{i}", stages=stages)
        print("CELL " + json.dumps(r.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
