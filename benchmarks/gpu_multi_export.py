"""The same tiny-twin export on one GPU, spread over two GPUs by accelerate, and under FSDP2: identical?

    PYTHONPATH=<site>:. python benchmarks/gpu_multi_export.py --out DIR

Run from the repository root of a materialized fork checkout, on a machine with 2 GPUs (the
``nvidia-h200-x2`` kind). One command: it launches every case as its own process (FSDP2 through
``python -m torch.distributed.run --nproc-per-node 2``), compares each exported checkpoint with
the single-GPU one tensor for tensor, prints a table, and writes ``DIR/multi_export.json``
(rewritten after every case) and the worker logs under ``DIR/logs/``.

Per twin (``--archs``, default Qwen3-30B-A3B and Gemma-4 26B-A4B tiny twins, 8 experts,
top-2, 4 layers, bf16): the twin is built once on CPU from ``--seed`` and saved with ``save_pretrained``;
the calibration ids are saved next to it. Every case loads that same directory with
``AutoModelForCausalLM.from_pretrained``, calibrates with the same ids (``--cfg``, default
NVFP4_DEFAULT_CFG) and calls ``export_hf_checkpoint``:

* ``single``       ``device_map={"": "cuda:0"}`` (the reference);
* ``single-again`` the same, in a new process: a control, the run is deterministic;
* ``accelerate``   ``device_map="auto"`` over cuda:0 and cuda:1: transformers balances the
                   layers (with 4 layers: embeddings and layers 0-1 on cuda:0, layers 2-3 and
                   the head on cuda:1; with 2 it would keep the tiny model on cuda:0, and then
                   ``max_memory`` forces a split); ``device_map`` in the results says where each
                   module went, ``layers_split`` whether decoder layers are on both GPUs;
* ``offload``      ``device_map="auto"`` with cuda:0 too small and CPU offload for the rest:
                   modelopt's other export path (``has_accelerate_offload`` -> streaming export);
* ``fsdp2``        2 processes, NCCL (gloo on CPU): ``python -m modelopt_fork.twin.fsdp2_export``
                   under ``torch.distributed.run``, which wraps the model with ``fsdp2_wrap``
                   (modelopt's FSDP2 helper: ``fully_shard`` on every decoder layer and the root)
                   under ``patch_fsdp_mp_dtypes``, as modelopt's own FSDP2 export tests do; the
                   export gathers the full state dict on rank 0, which writes.

Identical means the same tensor names, dtypes, shapes and bytes, and the same
``hf_quant_config.json`` (``modelopt_fork.checkpoint.compare``).

Validated on CPU (``--device cpu``; FSDP2 with gloo, accelerate on one device), 2026-11-22,
transformers 5.14.1: ``single-again``, ``accelerate`` and ``offload`` are identical to
``single``. Before patch 0013, ``fsdp2`` exported the same per-expert tensors bit for bit but
also each layer's fused 3-D ``experts.gate_up_proj`` / ``experts.down_proj`` (unquantized):
``_export_fused_experts`` deletes them from the module, but FSDP2 kept them in its param group
and set them back on the module; with 0013 it is identical too.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from modelopt_fork.bench.procs import first_line, run_worker, worker_env  # noqa: E402
from modelopt_fork.bench.record import Recorder  # noqa: E402
from modelopt_fork.twin.fsdp2_export import calibrate_and_export  # noqa: E402

ARCHS = ["qwen3-30b-a3b", "gemma4-26b-a4b"]
CASES = ["single", "single-again", "accelerate", "offload", "fsdp2"]
REFERENCE = "single"


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--archs", type=_csv, default=ARCHS)
    ap.add_argument("--cases", type=_csv, default=CASES)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4, help="4: accelerate's balanced map splits them 2 + 2")
    ap.add_argument("--cfg", default="NVFP4_DEFAULT_CFG")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: validation (gloo, one device)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--case-timeout", type=float, default=240.0)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints under DIR/ckpt")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # worker: case name
    ap.add_argument("--src", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dst", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case is None and args.out is None:
        ap.error("--out is required")
    return args


# ----------------------------------------------------------------------------- worker side


def _load(src: Path, dtype, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw).eval()


def _placement(model) -> dict:
    dm = getattr(model, "hf_device_map", None)
    return {k: str(v) for k, v in dm.items()} if dm else {}


def _split_map(model_size_bytes: int, n_gpus: int = 2) -> dict:
    """max_memory that cannot hold the model on cuda:0 alone (so accelerate spreads it)."""
    per = max(1, int(model_size_bytes * 0.6))
    return {i: per if i == 0 else 4 * model_size_bytes for i in range(n_gpus)}


def _single_process_case(args) -> dict:
    import torch

    from modelopt_fork.bench.procs import check_modelopt_origin

    rec = dict(case=args.case, modelopt=check_modelopt_origin(), torch=torch.__version__)
    dtype = getattr(torch, args.dtype)
    ids = torch.load(args.src / "calib_ids.pt")
    cpu = args.device == "cpu"
    try:
        rec["stage"] = "load"
        if args.case in ("single", "single-again"):
            model = _load(args.src, dtype, device_map={"": "cpu" if cpu else "cuda:0"})
        elif args.case == "accelerate":
            if importlib.util.find_spec("accelerate") is None:
                return dict(rec, error="accelerate is not installed (pip install accelerate)")
            if cpu:  # one device: exercises from_pretrained(device_map="auto") and the compare, no split
                model = _load(args.src, dtype, device_map="auto", max_memory={"cpu": 2**34})
            else:
                model = _load(args.src, dtype, device_map="auto")
                if len({v for v in model.hf_device_map.values()}) < 2:
                    size = sum(p.numel() * p.element_size() for p in model.parameters())
                    rec["forced_split"] = True
                    del model
                    torch.cuda.empty_cache()
                    model = _load(args.src, dtype, device_map="auto", max_memory=_split_map(size))
        elif args.case == "offload":
            if importlib.util.find_spec("accelerate") is None:
                return dict(rec, error="accelerate is not installed (pip install accelerate)")
            folder = Path(tempfile.mkdtemp(prefix="offload-"))
            size = _load(args.src, dtype, device_map={"": "cpu"}).get_memory_footprint()
            # half the model fits on the first device, the rest is offloaded (to CPU from a GPU; to disk
            # from the CPU, when validating on CPU)
            mm = {"cpu": int(size * 0.5)} if cpu else {0: int(size * 0.5), "cpu": 2**34}
            model = _load(args.src, dtype, device_map="auto", max_memory=mm, offload_folder=str(folder))
        else:
            raise ValueError(f"unknown case {args.case!r}")
        rec["device_map"] = _placement(model)
        rec["devices"] = sorted({str(p.device) for p in model.parameters()})
        layer_devs = {v for k, v in rec["device_map"].items() if ".layers." in k or k.endswith(".layers")}
        rec["layers_split"] = len(layer_devs) >= 2
        calibrate_and_export(model, ids, args.cfg, args.dst, rec)
    except Exception as e:  # noqa: BLE001 -- the case reports, the comparison goes on
        rec["error"], rec["trace"] = first_line(e), traceback.format_exc()[-4000:]
    return rec


def worker(args) -> int:
    from modelopt_fork.bench.procs import emit

    emit(_single_process_case(args))
    return 0


# ------------------------------------------------------------------------- orchestrator side


def _make_source(args, arch: str, src: Path) -> dict:
    import torch

    from modelopt_fork.twin import build_twin
    from modelopt_fork.twin.build import calib_ids

    twin = build_twin(
        arch,
        seed=args.seed,
        num_experts=args.experts,
        top_k=args.top_k,
        layers=args.layers,
        dtype=getattr(torch, args.dtype),
    )
    twin.model.save_pretrained(src)
    ids = calib_ids(twin.vocab_size, seed=args.seed, batch=args.batch, seq=args.seq)
    torch.save(ids, src / "calib_ids.pt")
    return dict(
        model=type(twin.model).__name__,
        params=sum(p.numel() for p in twin.model.parameters()),
        experts=args.experts,
        top_k=args.top_k,
        fused=[b.fused for b in twin.moe_blocks][:1],
    )


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _launch(args, arch, case, src, dst, logs) -> dict:
    me = str(Path(__file__).resolve())
    common = [
        "--case",
        case,
        "--src",
        str(src),
        "--dst",
        str(dst),
        "--cfg",
        args.cfg,
        "--dtype",
        args.dtype,
        "--device",
        args.device,
    ]
    if case == "fsdp2":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "modelopt_fork.twin.fsdp2_export", "--src", str(src), "--ids", str(src / "calib_ids.pt"),
               "--dst", str(dst), "--cfg", args.cfg, "--dtype", args.dtype, "--device", args.device]
    else:
        cmd = [sys.executable, me, *common]
    got: list[dict] = []
    cwd = Path(tempfile.mkdtemp(prefix="multi-export-cwd-"))
    env = worker_env(ROOT)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    rc, tail = run_worker(
        cmd, env=env, cwd=cwd, log_path=logs / f"{arch}_{case}.log", on_result=got.append, timeout=args.case_timeout
    )
    shutil.rmtree(cwd, ignore_errors=True)
    rec = (
        got[0]
        if got
        else dict(case=case, error=f"no result (exit code {rc}{', timed out' if rc is None else ''})", log_tail=tail)
    )
    rec["wall_s"] = round(time.time() - t0, 1)
    if rc not in (0,) and "error" not in rec:
        rec["error"] = f"exit code {rc}"
        rec["log_tail"] = tail
    return rec


def orchestrate(args) -> int:
    from modelopt_fork.checkpoint.compare import compare_checkpoints

    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    gpus = _gpus() if args.device == "cuda" else 0
    meta = dict(
        argv=sys.argv[1:],
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        device=args.device,
        gpus=gpus,
        accelerate=importlib.util.find_spec("accelerate") is not None,
    )
    if args.device == "cuda" and gpus:
        import torch

        meta["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(gpus)]
    rec = Recorder(args.out, "multi_export", meta=meta)
    print(f"device {args.device}, GPUs {gpus}, accelerate importable: {meta['accelerate']}", flush=True)
    work = Path(args.out / "ckpt") if args.keep else Path(tempfile.mkdtemp(prefix="multi-export-"))
    rows = []
    try:
        for arch in args.archs:
            src = work / arch / "source"
            try:
                info = _make_source(args, arch, src)
            except Exception as e:  # noqa: BLE001
                rows.append(rec.add(dict(arch=arch, case="source", error=first_line(e))))
                print(f"{arch}: cannot build the twin: {first_line(e)}", flush=True)
                continue
            rec.add(dict(arch=arch, case="source", **info))
            for case in [c for c in CASES if c in args.cases]:
                dst = work / arch / case
                print(f"[{time.strftime('%H:%M:%S')}] {arch} {case}", flush=True)
                if args.device == "cuda" and case in ("accelerate", "fsdp2") and gpus < 2:
                    r = dict(case=case, error=f"needs 2 GPUs, found {gpus}")
                elif args.device == "cuda" and gpus < 1:
                    r = dict(case=case, error="no CUDA GPU")
                else:
                    r = _launch(args, arch, case, src, dst, logs)
                r["arch"] = arch
                r["exported"] = (dst / "hf_quant_config.json").is_file() and "error" not in r
                if case != REFERENCE and r["exported"] and (work / arch / REFERENCE / "hf_quant_config.json").is_file():
                    d = compare_checkpoints(work / arch / REFERENCE, dst)
                    r["compare"] = d.to_dict()
                    r["identical"] = d.identical
                rows.append(rec.add(r))
                state = r.get("error") or r.get("compare", {}).get("summary", "")
                print(f"  {case}: {'exported' if r['exported'] else 'NOT exported'}; {state}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rec.update_meta(finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    print_table(rows)
    return 0


def _where(r: dict) -> str:
    if r.get("case") == "fsdp2":
        return f"{r.get('world', '?')} ranks, {','.join(r.get('devices', []))}"
    dm = r.get("device_map") or {}
    if dm:
        return "/".join(sorted(set(dm.values())))
    return ",".join(r.get("devices", []))


def print_table(rows: list[dict]) -> None:
    print("\n| arch | case | placement | exported | identical to single | first difference | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("case") == "source":
            continue
        c = r.get("compare") or {}
        first, mad = "", ""
        if c and not c.get("identical"):
            if c.get("differing"):
                first, mad = c["differing"][0]["name"], str(c["differing"][0].get("max_abs_diff"))
            else:
                first = c.get("summary", "")
        ident = "(reference)" if r["case"] == REFERENCE else ("-" if not c else ("yes" if c["identical"] else "NO"))
        err = r.get("error", "")
        print(
            f"| {r['arch']} | {r['case']} | {_where(r)} | {'yes' if r['exported'] else 'no: ' + err} | {ident} | "
            f"{first} | {mad} |"
        )


def main(argv=None) -> int:
    args = parse(argv)
    if args.case is not None:
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
