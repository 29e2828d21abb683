"""The dense behaviour gate: outside MoE, the fork exports what pristine upstream exports.

The series is about MoE models; a change it makes to a dense model's checkpoint is a change
for every user, and upstream would want it declared and shown right. The gate builds tiny dense
models (Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3; seeded random weights, no download),
quantizes each with the configurations users run on dense models (FP8, INT8 SmoothQuant,
INT4 AWQ, NVFP4, NVFP4 AWQ-lite) on seeded token ids, exports it, and compares the two
export directories file for file: the same file names, every safetensors tensor bit for bit
(:func:`..checkpoint.compare.compare_checkpoints`), every JSON file equal.

Pristine runs as 0.47.0 plus only the CPU fake-quant shim (patch 0003, without which NVFP4
cannot run on a CPU). A difference is allowed only where :data:`DECLARED` names the patch whose
header declares it, with the test that shows it right; any other difference, or a declared
one that no longer shows, fails the gate. AWQ-lite also runs as ``CFG:folded`` on the fork
(``fold_pre_quant_scale=True``, patch 0016's opt-in calibration-time fold, the form vLLM loads),
a declared change; its default form (no fold for dense models) must reproduce pristine exactly.

    python -m modelopt_fork.matrix.dense --out DIR [--archs ...] [--cfgs ...]   # the gate (a table)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"]
CFGS = ["FP8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG", "INT4_AWQ_CFG", "NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG",
        "NVFP4_AWQ_LITE_CFG:folded"]
# Tiny widths: every linear's in_features a multiple of 128 (INT4 AWQ's block), heads of 16.
SIZES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128)
EXTRA = {"mistral": {"sliding_window": 32}, "gemma2": {"sliding_window": 32},
         "gemma3_text": {"sliding_window": 32}}
# (config) -> (patch, what changes, the tests that show it right). Every entry must show.
DECLARED: dict[str, tuple[str, str, str]] = {
    "NVFP4_AWQ_LITE_CFG:folded": (
        "0016-awq-fold-pre-quant-scale.patch",
        "fold_pre_quant_scale=True (opt-in; the default for MoE models only, 0020): AWQ scales folded "
        "into the preceding layer at the end of the search: no pre_quant_scale, quant_algo NVFP4 "
        "(vLLM loads no pre_quant_scale and refuses NVFP4_AWQ)",
        "tests/regression/test_calibrated_is_exported.py; docs/vllm-stage.md (every AWQ cell loads in vLLM "
        "and agrees with the calibrated model)"),
}
PRISTINE_PATCHES = ("0003",)  # the CPU fake-quant shim: NVFP4 on a CPU


def build_dense(arch: str, seed: int = 0):
    """A tiny dense causal LM of model type ``arch`` with weights from ``seed`` (float32, CPU)."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(arch, **SIZES, **EXTRA.get(arch, {}))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    return model


def export_dense(arch: str, cfg: str, out: Path, seed: int = 0) -> dict:
    """Build, calibrate (seeded ids) and export one cell to ``out``."""
    import torch

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    from ..twin.build import calib_ids
    from .axes import quant_config

    model = build_dense(arch, seed)
    ids = calib_ids(model.config.vocab_size, seed=seed + 1000, batch=4, seq=32)

    def loop(m):
        with torch.no_grad():
            for row in ids.split(2):
                m(row)

    name, _, form = cfg.partition(":")
    mtq.quantize(model, quant_config(name, fold_pre_quant_scale=True if form == "folded" else None), loop)
    export_hf_checkpoint(model, export_dir=out)
    return {"arch": arch, "cfg": cfg, "files": sorted(p.name for p in Path(out).iterdir())}


def compare_dirs(a: Path, b: Path) -> list[str]:
    """What differs between two export directories (empty: identical files)."""
    from ..checkpoint.compare import compare_checkpoints

    names_a, names_b = ({p.name for p in Path(d).iterdir()} for d in (a, b))
    out = [f"only in {d.name}: {sorted(n)}" for d, n in ((a, names_a - names_b), (b, names_b - names_a)) if n]
    for name in sorted(names_a & names_b):
        # hf_quant_config.json is compared by compare_checkpoints below, the index is its layout
        if name.endswith(".json") and name not in ("model.safetensors.index.json", "hf_quant_config.json"):
            ja, jb = (json.loads((d / name).read_text()) for d in (a, b))
            if ja != jb:
                keys = sorted(k for k in set(ja) | set(jb) if ja.get(k) != jb.get(k)) if isinstance(ja, dict) else []
                out.append(f"{name}: differs ({', '.join(keys[:6])})")
    diff = compare_checkpoints(a, b)
    if not diff.identical:
        out.append(diff.summary())
    return out


def run_gate(root: Path, cells: list[tuple[str, str]], out: Path, log=print) -> list[dict]:
    """Export ``cells`` with pristine (+ :data:`PRISTINE_PATCHES`) and with the fork; judge each.

    A row's ``status``: ``identical``; ``declared`` (differs as :data:`DECLARED` says);
    ``DIFFERS`` (undeclared); ``STALE`` (declared, but identical); ``FAILED`` (an export failed,
    on either side: the gate cannot judge the cell).
    """
    from concurrent.futures import ThreadPoolExecutor

    from ..bench.procs import TREE_ENV, run_worker, worker_env
    from ..series.pin import load_pin
    from ..series.seriesfile import load_series
    from .upstream import upstream_tree

    root, out = Path(root).resolve(), Path(out).resolve()
    names = load_series(root).names
    shim = tuple(n for n in names if n.startswith(PRISTINE_PATCHES))
    pristine = upstream_tree(root, load_pin(root).version, shim, log)
    base = list(dict.fromkeys((arch, cfg.partition(":")[0]) for arch, cfg in cells))  # pristine has no folded form
    # the fork side: the tree under test when one is set (red/green runs the series minus a patch)
    sides = {"pristine": (pristine, base), "fork": (os.environ.get(TREE_ENV) or None, cells)}
    got: dict[str, dict] = {side: {} for side in sides}

    def run(side):
        tree, todo = sides[side]
        cmd = [sys.executable, "-m", "modelopt_fork.matrix.dense", "--cells", json.dumps(todo), "--out",
               str(out / side)]
        rc, tail = run_worker(cmd, env=worker_env(root, tree), cwd=out, log_path=out / f"{side}.log",
                              on_result=lambda r: got[side].__setitem__((r["arch"], r["cfg"]), r))
        for c in todo:
            got[side].setdefault(tuple(c), {"ok": False, "error": f"worker exit {rc}: {tail.splitlines()[-1:]}"})

    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, sides))
    rows = []
    for arch, cfg in cells:
        base_cfg = cfg.partition(":")[0]
        a, b = got["pristine"][(arch, base_cfg)], got["fork"][(arch, cfg)]
        row = {"arch": arch, "cfg": cfg}
        if not (a["ok"] and b["ok"]):
            row.update(status="FAILED",
                       detail=f"pristine: {a.get('error', 'ok')}; fork: {b.get('error', 'ok')}")
        else:
            diff = compare_dirs(Path(a["dir"]), Path(b["dir"]))
            declared = DECLARED.get(cfg)
            if diff:
                row.update(status="declared" if declared else "DIFFERS", detail="; ".join(diff)[:300],
                           patch=declared[0] if declared else "")
            else:
                row.update(status="STALE" if declared else "identical", detail="")
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| arch | config | status | detail |", "|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['cfg']} | {r['status']}{' (' + r['patch'] + ')' if r.get('patch') else ''} | "
              f"{r['detail']} |" for r in rows]
    return "\n".join(lines) + "\n"


def gate_main(argv=None) -> int:
    """The gate: every cell of ``--archs`` x ``--cfgs``; a table; exit 1 unless all pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--archs", nargs="*", default=ARCHS)
    ap.add_argument("--cfgs", nargs="*", default=CFGS)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    a = ap.parse_args(argv)
    rows = run_gate(a.root, [(x, c) for x in a.archs for c in a.cfgs], a.out)
    print(table(rows))
    return 0 if all(r["status"] in ("identical", "declared") for r in rows) else 1


def main(argv=None) -> int:
    """Worker: export the cells (JSON list of [arch, cfg]) under ``--out``, one RESULT line each."""
    from ..bench.procs import check_modelopt_origin, emit, first_line

    ap = argparse.ArgumentParser(description="dense gate worker")
    ap.add_argument("--cells", required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    origin = check_modelopt_origin()
    for arch, cfg in json.loads(a.cells):
        d = a.out / f"{arch}__{cfg}"
        try:
            rec = export_dense(arch, cfg, d)
            rec["ok"] = True
        except Exception as e:  # noqa: BLE001 -- recorded per cell, compared by the driver
            rec = {"arch": arch, "cfg": cfg, "ok": False, "error": first_line(e)}
        emit(dict(rec, dir=str(d), modelopt=origin))
    return 0


if __name__ == "__main__":
    sys.exit(main() if "--cells" in sys.argv else gate_main())
