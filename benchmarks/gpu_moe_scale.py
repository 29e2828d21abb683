"""Calibration and export cost on MoE layers of real size: the fork vs pristine upstream, and per expert.

    PYTHONPATH=<site>:. python benchmarks/gpu_moe_scale.py --out DIR [--quick]

Run from the repository root of a materialized fork checkout (``modelopt/`` present) with the
pinned wheel cache ``.modelopt-fork/`` available (it builds the pristine upstream tree from
it; or pass ``--upstream-tree PATH``). One command does everything and stops by itself
before ``--budget-s`` (default 480 s): what was measured so far is in
``DIR/moe_scale.json`` (rewritten after every measurement; ``moe_scale.jsonl`` too) and the
table is printed at the end. Worker logs: ``DIR/logs/``.

**Twins.** ``build_twin(arch, widths="real")``: Gemma-4 26B-A4B and Qwen3-30B-A3B with their
real hidden, intermediate and expert-intermediate sizes, heads and head dims, 128 experts
(top-k 8 as in the real models), ``--layers`` (default 2) decoder layers, vocabulary 1024
(it only sizes the embedding and LM head, which NVFP4 export does not quantize and copies
once), bf16, built directly on the GPU from a fixed seed (the same weights in every run).

**Part 1, fork vs upstream** (``--cfgs``, default NVFP4_AWQ_FULL_CFG and NVFP4_DEFAULT_CFG).
Implementations (``--impls``): ``fork``; ``fork-rescue``, the fork exporting with
``save_rescue=True`` (the calibration rescue file, patch 0022's opt-in); ``upstream``. Each
runs in its own process (pristine upstream: ``modelopt`` imported from
``upstream_tree(root, --upstream)``, checked at start); ``--passes N`` starts N processes per
(implementation, arch), in rotating order, so that drift of the machine over the run and
process-level effects are spread over all implementations. Per (arch, cfg): ``--warmups`` untimed rounds
with the timed shapes (CUDA context, cuBLAS, Triton JIT), then ``--repeats`` rounds of
build -> ``mtq.quantize`` (timed: "calibrate") -> ``export_hf_checkpoint`` into a scratch dir
(timed: "export", includes the file write) -> delete. The device is synchronized around
each phase and the peak allocated memory is reset at its start
(``torch.cuda.max_memory_allocated``; it includes the model itself, ``*_start_gib`` says how
much was allocated when the phase began). Ratios fork/upstream of the medians (and of the
minima); target <= 1.02. Pristine 0.47.0 cannot export AWQ configs with transformers 5 fused
experts (``get_experts_list``: "object of type 'Quant...Experts' has no len()", fixed by patch
0004), so for AWQ cells only the calibration ratio exists; the table says so.

**Part 2, export time vs experts** (fork only; ``--sweep``, default 8, 32, 128, 256 experts,
``--sweep-archs``, ``--sweep-cfg``). Calibration is timed separately and is not part of the
export figure. The default config is NVFP4_DEFAULT: fused experts get no AWQ smoothing in
either config (they are exported as plain NVFP4, patch 0004), so the per-expert export work is
the same, and the cheaper max calibration leaves more of the time budget for repeats;
``--sweep-cfg NVFP4_AWQ_FULL_CFG`` measures it under AWQ. Reported: export seconds,
seconds/experts, and the marginal cost between consecutive counts,
(t_i - t_{i-1}) / (e_i - e_{i-1}). Export time is a fixed part (attention, dense MLP,
embeddings, file write) plus a per-expert part, so seconds/experts falls with the count even
when the per-expert cost is constant; the target (constant within +-20%) is checked on the
marginal costs (``modelopt_fork.bench.scaling``). Rounds are taken one per count first, then
repeated, so a time limit leaves a complete curve.

**CPU profile of the export path** (2026-11-22, this repository's 2-core CPU machine, torch
2.13 CPU, transformers 5.14.1, fork 0001-0006, NVFP4_DEFAULT, 2 layers; cProfile, functions
by cumulative time, call counts compared across expert counts; figures in BENCHMARKS.md):

* Real Qwen3-30B-A3B widths, 8/16/32 experts, 1 thread: export 10.4 / 15.3 / 26.3 s, marginal
  0.61 and 0.69 s per expert. All tensor work: ``NVFP4QTensor._cast_fp4``
  (``torch.searchsorted`` 62%, ``torch.any``) and the block amax (``torch.amax``/``amin``) of
  ``get_weights_scaling_factor``.
* Tiny widths (hidden 64), 8..256 experts: marginal 5.1 / 5.3 / 5.6 / 5.9 ms per expert (2
  layers); every function's call count grows linearly with the expert count. About 2.8 ms of
  Python per expert and layer (``_export_fused_experts``: a ``copy.deepcopy`` of the gate/up
  weight quantizer per expert, an ``nn.Module`` per expert, format lookups; safetensors'
  per-tensor bookkeeping). On a GPU this Python part is likely most of the per-expert cost.
* A full garbage collection (~0.4 s, a scan of the ~570k live objects of the process) landed
  inside the 256-expert export in some runs: a step, not per-expert work, but it moved the
  last marginal cost by ~60%. Hence a ``gc.collect()`` before each phase (untimed), GC time
  and full collections recorded per phase, and the sweep analysed with and without GC time.
* Trap: with 2 OpenMP threads on that shared 2-core machine every ``torch.searchsorted`` call
  cost a fixed ~12 ms whatever its size (thread wake-up), which made export look 10x slower
  and super-linear. CPU timings there need ``--threads 1``. It does not apply on CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # as the orchestrator: modelopt_fork from this checkout
    sys.path.append(str(ROOT))

from modelopt_fork.bench.measure import stats  # noqa: E402
from modelopt_fork.bench.procs import first_line, run_worker, worker_env  # noqa: E402
from modelopt_fork.bench.record import Recorder  # noqa: E402
from modelopt_fork.bench.scaling import analyse  # noqa: E402

ARCHS = ["gemma4-26b-a4b", "qwen3-30b-a3b"]
CFGS = ["NVFP4_AWQ_FULL_CFG", "NVFP4_DEFAULT_CFG"]
SWEEP = [8, 32, 128, 256]
TARGET_RATIO = 1.02
# implementations: the fork as installed, the fork with export_hf_checkpoint(save_rescue=True)
# (patch 0022's opt-in: the calibration rescue file), pristine upstream
IMPLS = ["fork", "fork-rescue", "upstream"]
EXPORT_KWARGS = {"fork": {}, "fork-rescue": {"save_rescue": True}, "upstream": {}}
UPSTREAM_AWQ_NOTE = "pristine export fails (fused experts + AWQ, patch 0004): calibration ratio only"


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _cpu_list(s: str) -> list[int]:
    out = []
    for part in _csv(s):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="results folder (JSON, logs)")
    ap.add_argument("--quick", action="store_true", help="one arch, 2 repeats, sweep 8,32,128")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--archs", type=_csv, default=ARCHS)
    ap.add_argument("--cfgs", type=_csv, default=CFGS)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4, help="calibration sequences")
    ap.add_argument("--seq", type=int, default=256, help="calibration sequence length")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per worker process")
    ap.add_argument("--impls", type=_csv, default=IMPLS, help=",".join(IMPLS))
    ap.add_argument("--warmups", type=int, default=1, help="untimed rounds per worker process, same shapes")
    ap.add_argument("--no-export", dest="export", action="store_false",
                    help="time calibration only (e.g. AWQ, whose export pristine upstream cannot do)")
    ap.add_argument("--passes", type=int, default=1,
                    help="worker processes per (impl, arch), run in rotating order")
    ap.add_argument("--sweep", type=lambda s: [int(x) for x in _csv(s)], default=SWEEP, help="expert counts")
    ap.add_argument("--sweep-archs", type=_csv, default=["qwen3-30b-a3b", "gemma4-26b-a4b"])
    ap.add_argument("--sweep-cfg", default="NVFP4_DEFAULT_CFG", help="see the docstring: why not AWQ")
    ap.add_argument("--sweep-repeats", type=int, default=2)
    ap.add_argument("--parts", type=_csv, default=["ratios", "sweep"], help="ratios,sweep")
    ap.add_argument("--upstream", default=None, help="upstream version (default: the pin)")
    ap.add_argument(
        "--upstream-with",
        action="append",
        default=[],
        metavar="PATCH",
        help="apply this patch of the series to the upstream tree (e.g. 0003 on CPU)",
    )
    ap.add_argument("--upstream-tree", type=Path, default=None, help="a ready upstream tree")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting work after this")
    ap.add_argument("--sweep-share", type=float, default=0.4, help="part of the budget for the sweep")
    ap.add_argument("--scratch", type=Path, default=None, help="where exports are written (then deleted)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in the workers")
    ap.add_argument("--cpus", type=_cpu_list, default=None, help="pin workers to these cores, e.g. 0-7")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is None and args.out is None:
        ap.error("--out is required")
    if args.quick:
        args.archs, args.repeats, args.sweep_repeats = args.archs[:1], 2, 1
        args.sweep, args.sweep_archs = [e for e in args.sweep if e <= 128], args.sweep_archs[:1]
    return args


# ----------------------------------------------------------------------------- worker side


def _secs(rec: dict, key: str) -> str:
    return f"{rec[key]:.2f}s" if rec.get(key) is not None else "-"


def _err(rec: dict) -> str:
    e = rec.get("calibrate_error") or rec.get("export_error")
    return f" [{e}]" if e else ""


def _build(arch, experts, job):
    import torch

    from modelopt_fork.twin import build_twin

    dtype = getattr(torch, job["dtype"])
    return build_twin(
        arch,
        seed=job["seed"],
        device=job["device"],
        dtype=dtype,
        layers=job["layers"],
        num_experts=experts,
        widths="real",
    )


def _round(arch, experts, cfg, job, *, ids, do_export: bool) -> dict:
    """build -> calibrate (timed) -> export (timed); the model is dropped at the end."""
    import torch

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt_fork.bench.measure import phase

    dev = job["device"]
    rec: dict = {}
    t0 = time.perf_counter()
    try:
        twin = _build(arch, experts, job)
    except Exception as e:  # noqa: BLE001 -- e.g. fewer experts than top-k: recorded
        return {"calibrate_error": f"build: {first_line(e)}", "trace": traceback.format_exc()[-3000:]}
    rec["build_s"] = time.perf_counter() - t0
    rec["params"] = sum(p.numel() for p in twin.model.parameters())
    ids = ids.to(dev)

    def loop(model):
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    try:
        with phase(dev, rec, "calibrate"):
            mtq.quantize(twin.model, getattr(mtq, cfg), loop)
    except Exception as e:  # noqa: BLE001 -- recorded, the benchmark goes on
        rec["calibrate_error"], rec["trace"] = first_line(e), traceback.format_exc()[-3000:]
        do_export = False
    if do_export:
        out = Path(tempfile.mkdtemp(prefix="moe-scale-", dir=job.get("scratch")))
        try:
            with phase(dev, rec, "export"), _time_export_core(dev, rec):
                export_hf_checkpoint(twin.model, export_dir=out, **EXPORT_KWARGS[job["impl"]])
            rec["export_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        except Exception as e:  # noqa: BLE001
            rec["export_error"], rec["trace"] = first_line(e), traceback.format_exc()[-3000:]
            rec.pop("export_s", None)
            rec.pop("export_peak_gib", None)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    del twin
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rec


@contextmanager
def _time_export_core(dev, rec):
    """Also time ``_export_transformers_checkpoint`` (the in-memory export: requantize, pack, state
    dict) into ``export_core_s``: the same function in fork and upstream, without the file
    writes and the rescue file around it, whose disk time varies between rounds."""
    import modelopt.torch.export.unified_export_hf as ueh
    from modelopt_fork.bench.measure import sync

    orig = ueh._export_transformers_checkpoint

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            sync(dev)
            rec["export_core_s"] = time.perf_counter() - t0

    ueh._export_transformers_checkpoint = timed
    try:
        yield
    finally:
        ueh._export_transformers_checkpoint = orig


def _ids(vocab, batch, seq, seed):
    from modelopt_fork.twin.build import calib_ids

    return calib_ids(vocab, seed=seed, batch=batch, seq=seq)


def _cell(job, cell, emit, progress):
    """Warm-up, then repeats of one (arch, cfg) until done or the cell's deadline."""
    from modelopt_fork.twin.shrink import REAL_WIDTHS_VOCAB

    arch, cfg = cell["arch"], cell["cfg"]
    base = dict(part="ratios", impl=job["impl"], arch=arch, cfg=cfg, experts=job["experts"], layers=job["layers"])
    # warm-up rounds take the timed batch shape: a first round with a new shape pays cuBLAS
    # heuristics and Triton autotuning again (measured: the first timed round's calibration
    # took twice the later ones' after a warm-up on a smaller batch)
    ids = _ids(REAL_WIDTHS_VOCAB, job["batch"], job["seq"], job["seed"])
    do_export, last = job.get("export", True), None
    warmups = job.get("warmups", 1)
    for i in range(-warmups, job["repeats"]):
        if i >= 1 and time.time() + last > cell["deadline"]:  # at least one timed round per cell
            emit(dict(base, rep=i, skipped="time budget"))
            progress(f"{job['impl']} {arch} {cfg}: stopped before repeat {i} (time budget)")
            break
        t0 = time.time()
        rec = _round(arch, job["experts"], cfg, job, ids=ids, do_export=do_export)
        last = time.time() - t0
        if "export_error" in rec or "calibrate_error" in rec:
            do_export = False  # it fails the same way each time: spend the time on calibration
        emit(dict(base, rep=i if i >= 0 else "warmup", **rec))
        progress(
            f"{job['impl']} {arch} {cfg} {'warmup' if i < 0 else f'rep {i}'}: calibrate "
            f"{_secs(rec, 'calibrate_s')} export {_secs(rec, 'export_s')}{_err(rec)}"
        )


def _sweep(job, emit, progress):
    """Per arch: a warm-up, then rounds over the expert counts (one each, then again)."""
    from modelopt_fork.twin.shrink import REAL_WIDTHS_VOCAB

    ids = _ids(REAL_WIDTHS_VOCAB, job["batch"], job["seq"], job["seed"])
    counts = sorted(job["sweep"])
    for arch in job["sweep_archs"]:
        base = dict(part="sweep", impl=job["impl"], arch=arch, cfg=job["sweep_cfg"], layers=job["layers"])
        rec = _round(arch, counts[0], job["sweep_cfg"], job, ids=_ids(REAL_WIDTHS_VOCAB, 1, 32, 1), do_export=True)
        emit(dict(base, experts=counts[0], rep="warmup", **rec))
        last: dict[int, float] = {}
        for rep in range(job["sweep_repeats"]):
            for e in counts:
                est = last.get(e, 2 * max(last.values(), default=0.0))
                if time.time() + est > job["arch_deadline"][arch]:
                    emit(dict(base, experts=e, rep=rep, skipped="time budget"))
                    progress(f"sweep {arch}: {e} experts rep {rep} skipped (time budget)")
                    continue
                t0 = time.time()
                rec = _round(arch, e, job["sweep_cfg"], job, ids=ids, do_export=True)
                last[e] = time.time() - t0
                emit(dict(base, experts=e, rep=rep, **rec))
                progress(
                    f"sweep {arch} {e} experts rep {rep}: export {_secs(rec, 'export_s')} "
                    f"(calibrate {_secs(rec, 'calibrate_s')}){_err(rec)}"
                )


def worker(job: dict) -> int:
    from modelopt_fork.bench.procs import check_modelopt_origin, emit, progress

    origin = check_modelopt_origin()
    import torch
    import transformers

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job.get("cpus"):  # the same cores for every worker: no worker lands on a busier or farther one
        os.sched_setaffinity(0, job["cpus"])
    env = dict(
        part="env",
        impl=job["impl"],
        modelopt=origin,
        torch=torch.__version__,
        transformers=transformers.__version__,
        device=job["device"],
        threads=torch.get_num_threads(),
    )
    if torch.device(job["device"]).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(job["device"])
    emit(env)
    if job["kind"] == "cells":
        for cell in job["cells"]:
            _cell(job, cell, emit, progress)
    else:
        _sweep(job, emit, progress)
    return 0


# ------------------------------------------------------------------------- orchestrator side


def _upstream_tree(args) -> Path:
    if args.upstream_tree:
        return args.upstream_tree
    from modelopt_fork.matrix.upstream import upstream_tree
    from modelopt_fork.series.pin import load_pin

    version = args.upstream or load_pin(ROOT).version
    return upstream_tree(ROOT, version, tuple(args.upstream_with), log=lambda m: print(f"  {m}", flush=True))


# the command-line settings a worker needs, passed as they are
JOB_ARGS = ("device", "dtype", "layers", "experts", "batch", "seq", "repeats", "warmups", "export", "seed",
            "threads", "cpus")


def _job(args, impl, **kw) -> dict:
    return dict(
        impl=impl,
        **{k: getattr(args, k) for k in JOB_ARGS},
        scratch=str(args.scratch) if args.scratch else None,
        **kw,
    )


def _spawn(args, rec, job, tree, label, hard_deadline):
    env = worker_env(ROOT, tree if job["impl"] == "upstream" else None)
    cwd = Path(tempfile.mkdtemp(prefix="moe-scale-cwd-"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)

    def got(r):
        rec.add(r)

    rc, tail = run_worker(
        cmd,
        env=env,
        cwd=cwd,
        log_path=args.out / "logs" / f"{label.replace(' ', '_')}.log",
        on_result=got,
        timeout=max(30.0, hard_deadline - time.time()),
    )
    shutil.rmtree(cwd, ignore_errors=True)
    if rc != 0:
        why = "killed at the time limit" if rc is None else f"exit code {rc}"
        rec.add(dict(part="worker", label=label, error=why, log_tail=tail))
        print(f"  worker {label}: {why}\n" + "\n".join("    " + x for x in tail.splitlines()), flush=True)


def orchestrate(args) -> int:
    t_start = time.time()
    end = t_start + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(
        args.out,
        "moe_scale",
        meta=dict(
            argv=sys.argv[1:],
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            args={k: str(v) for k, v in vars(args).items()},
        ),
    )
    tree = None
    if "ratios" in args.parts:
        try:
            tree = _upstream_tree(args)
            rec.update_meta(upstream_tree=str(tree))
        except Exception as e:  # noqa: BLE001
            print(
                f"no pristine upstream tree ({first_line(e)}): carry .modelopt-fork/ (the pinned wheel "
                "cache) or pass --upstream-tree; fork-only figures follow",
                flush=True,
            )
            rec.update_meta(upstream_error=first_line(e))
    ratio_end = end - (args.budget_s * args.sweep_share if "sweep" in args.parts else 0.0)
    if "ratios" in args.parts:
        impls = [i for i in args.impls if tree or i != "upstream"]
        runs = []
        for p in range(args.passes):
            for i, arch in enumerate(args.archs):
                k = (p + i) % len(impls)
                order = impls[k:] + impls[:k]  # rotate who goes first
                runs += [(impl, arch, p) for impl in order]
        for k, (impl, arch, p) in enumerate(runs):
            share = (ratio_end - time.time()) / (len(runs) - k)
            start = time.time()
            cells = [
                dict(arch=arch, cfg=cfg, deadline=start + share * (j + 1) / len(args.cfgs))
                for j, cfg in enumerate(args.cfgs)
            ]
            _spawn(
                args,
                rec,
                _job(args, impl, kind="cells", cells=cells),
                tree,
                f"{impl} {arch} pass{p}",
                hard_deadline=min(end, start + share + 60),
            )
    if "sweep" in args.parts and args.sweep_archs:
        now = time.time()
        per = (end - now) / len(args.sweep_archs)
        deadlines = {a: now + per * (i + 1) for i, a in enumerate(args.sweep_archs)}
        _spawn(
            args,
            rec,
            _job(
                args,
                "fork",
                kind="sweep",
                sweep=args.sweep,
                sweep_archs=args.sweep_archs,
                sweep_cfg=args.sweep_cfg,
                sweep_repeats=args.sweep_repeats,
                arch_deadline=deadlines,
            ),
            tree,
            "fork sweep",
            hard_deadline=end + 30,
        )
    summary = summarize(rec.records)
    (args.out / "moe_scale_summary.json").write_text(json.dumps(summary, indent=1))
    rec.update_meta(finished=time.strftime("%Y-%m-%d %H:%M:%S"), seconds=round(time.time() - t_start, 1))
    print_tables(summary, rec.records)
    return 0


# ----------------------------------------------------------------------------------- tables


def _timed(records, **match):
    return [
        r
        for r in records
        if r.get("rep") not in ("warmup", None) and "skipped" not in r and all(r.get(k) == v for k, v in match.items())
    ]


def summarize(records: list[dict]) -> dict:
    out: dict = {"cells": [], "ratios": [], "sweep": {}, "env": [r for r in records if r.get("part") == "env"]}
    keys = sorted({(r["arch"], r["cfg"]) for r in records if r.get("part") == "ratios"})
    for arch, cfg in keys:
        per_impl = {}
        for impl in IMPLS:
            every = [
                r
                for r in records
                if r.get("part") == "ratios" and r.get("impl") == impl and r.get("arch") == arch and r.get("cfg") == cfg
            ]
            if not every:
                continue
            rs = _timed(records, part="ratios", impl=impl, arch=arch, cfg=cfg)
            errs = [r for r in every if "export_error" in r or "calibrate_error" in r]
            cell = dict(
                arch=arch,
                cfg=cfg,
                impl=impl,
                reps=len(rs),
                **{
                    m: stats(r.get(m) for r in rs)
                    for m in (
                        "calibrate_s",
                        "export_s",
                        "export_core_s",
                        "calibrate_peak_gib",
                        "export_peak_gib",
                        "build_s",
                        "calibrate_gc_s",
                        "export_gc_s",
                    )
                },
                errors=sorted({r.get("calibrate_error") or r.get("export_error") for r in errs}),
            )
            out["cells"].append(cell)
            per_impl[impl] = cell
        for impl in [i for i in per_impl if i != "upstream" and "upstream" in per_impl]:
            f, u = per_impl[impl], per_impl["upstream"]
            row = dict(arch=arch, cfg=cfg, impl=impl)
            for m in ("calibrate_s", "export_s", "export_core_s", "calibrate_peak_gib", "export_peak_gib"):
                for s in ("median", "min"):
                    a, b = f[m].get(s), u[m].get(s)
                    row[f"{m}_{s}_ratio"] = (a / b) if (a is not None and b) else None
            row["note"] = (
                UPSTREAM_AWQ_NOTE
                if ("AWQ" in cfg and not u["export_s"] and u["errors"])
                else ("; ".join(u["errors"]) if u["errors"] else "")
            )
            row["within_target"] = all(
                v <= TARGET_RATIO for k, v in row.items() if k.endswith("_s_median_ratio") and v is not None
            )
            out["ratios"].append(row)
    for arch in sorted({r["arch"] for r in records if r.get("part") == "sweep"}):
        pts = {}
        for e in sorted({r["experts"] for r in _timed(records, part="sweep", arch=arch)}):
            rs = _timed(records, part="sweep", arch=arch, experts=e)
            v = stats(r.get("export_s") for r in rs)
            if v:
                pts[e] = dict(
                    export_s=v,
                    export_gc_s=stats(r.get("export_gc_s") for r in rs),
                    export_gc_full=stats(r.get("export_gc_full") for r in rs),
                    export_without_gc_s=stats(
                        r["export_s"] - r.get("export_gc_s", 0.0) for r in rs if r.get("export_s") is not None
                    ),
                    calibrate_s=stats(r.get("calibrate_s") for r in rs),
                    export_peak_gib=stats(r.get("export_peak_gib") for r in rs),
                )
        entry = dict(points=pts)
        if len(pts) >= 2:
            entry["scaling"] = analyse({e: p["export_s"]["median"] for e, p in pts.items()}).to_dict()
            entry["scaling_without_gc"] = analyse(
                {e: p["export_without_gc_s"]["median"] for e, p in pts.items()}
            ).to_dict()
        out["sweep"][arch] = entry
    return out


def _f(v, fmt=".2f"):
    return "-" if v is None else format(v, fmt)


def print_tables(summary: dict, records: list[dict]) -> None:
    for e in summary["env"]:
        print(
            f"env {e['impl']}: modelopt {e['modelopt']}, torch {e['torch']}, transformers {e['transformers']}, "
            f"{e.get('gpu', e['device'])}"
        )
    if summary["cells"]:
        print(
            "\n| arch | cfg | impl | reps | calibrate s (median/min) | export s (median/min) | "
            "export in memory s (median/min) | calib / export peak GiB | calib / export GC s | errors |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        for c in summary["cells"]:
            print(
                f"| {c['arch']} | {c['cfg']} | {c['impl']} | {c['reps']} | "
                f"{_f(c['calibrate_s'].get('median'))} / {_f(c['calibrate_s'].get('min'))} | "
                f"{_f(c['export_s'].get('median'))} / {_f(c['export_s'].get('min'))} | "
                f"{_f(c['export_core_s'].get('median'))} / {_f(c['export_core_s'].get('min'))} | "
                f"{_f(c['calibrate_peak_gib'].get('max'))} / {_f(c['export_peak_gib'].get('max'))} | "
                f"{_f(c['calibrate_gc_s'].get('median'))} / {_f(c['export_gc_s'].get('median'))} | "
                f"{'; '.join(c['errors'])} |"
            )
    if summary["ratios"]:
        print(f"\nfork / upstream (median, min in brackets; target <= {TARGET_RATIO})")
        print("| arch | cfg | impl | calibrate | export | export in memory | calib peak mem | export peak mem | note |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
        for r in summary["ratios"]:

            def cell(m, r=r):
                return f"{_f(r[f'{m}_median_ratio'], '.3f')} ({_f(r[f'{m}_min_ratio'], '.3f')})"

            print(
                f"| {r['arch']} | {r['cfg']} | {r['impl']} | {cell('calibrate_s')} | {cell('export_s')} | "
                f"{cell('export_core_s')} | "
                f"{_f(r['calibrate_peak_gib_median_ratio'], '.3f')} | {_f(r['export_peak_gib_median_ratio'], '.3f')} "
                f"| {r['note']} |"
            )
    for arch, s in summary["sweep"].items():
        print(f"\nexport vs experts, {arch} (fork; median of repeats)")
        print(
            "| experts | reps | export s | ms / expert | marginal ms / expert | GC s (full GCs) | "
            "marginal without GC | calibrate s | export peak GiB |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        sc, sg = s.get("scaling") or {}, s.get("scaling_without_gc") or {}
        for i, (e, p) in enumerate(sorted(s["points"].items(), key=lambda kv: int(kv[0]))):
            marg = sc["marginal_ms"][i] if sc else None
            marg_g = sg["marginal_ms"][i] if sg else None
            print(
                f"| {e} | {p['export_s']['n']} | {_f(p['export_s']['median'])} | "
                f"{_f(1000 * p['export_s']['median'] / int(e), '.1f')} | {_f(marg, '.1f')} | "
                f"{_f(p['export_gc_s'].get('median'))} ({_f(p['export_gc_full'].get('max'), '.0f')}) | "
                f"{_f(marg_g, '.1f')} | {_f(p['calibrate_s'].get('median'))} | "
                f"{_f(p['export_peak_gib'].get('max'))} |"
            )
        for label, x in (("export", sc), ("export without GC", sg)):
            if x:
                verdict = {True: "within", False: "NOT within", None: "undecided"}[x["within"]]
                spread = _f(x["marginal_spread"], ".1%") if x["marginal_spread"] is not None else "-"
                print(
                    f"{label}: {x['fit_fixed_s']:.2f} s + {x['fit_slope_ms']:.1f} ms x experts; marginal cost "
                    f"spread {spread}, {x['trend']} -> {verdict} +-{x['tolerance']:.0%}"
                    + (f" ({'; '.join(x['notes'])})" if x["notes"] else "")
                )
    failed = [r for r in records if r.get("part") == "worker"]
    for r in failed:
        print(f"worker {r['label']}: {r['error']}")


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker is not None:
        return worker(json.loads(args.worker))
    return orchestrate(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
