"""The vLLM stage of the MoE matrix, on the GPU machine: export every cell, load it in real vLLM, compare.

    python3 benchmarks/gpu_vllm_matrix.py --out $OUT [--archs A ...] [--cfgs C ...] [--scenarios S ...]
        [--dtype float32|bfloat16] [--real] [--per-expert ARCH ...] [--jobs 8] [--vllm-jobs 4]

Phase 1 (ModelOpt side, ``PYTHONPATH=$MO_SITE:<repo>``): every cell in a worker process
(``python -m modelopt_fork.matrix.vllm_stage``, :func:`modelopt_fork.matrix.vllm_stage.export_cell`):
build the twin on cuda, calibrate, take the fake-quantized log-probs, export, validate, run the
reference runtime in vLLM's convention. ``--real``: also the real-width 128-expert twins of
Qwen3-30B-A3B and Gemma-4 26B-A4B (scenario full). ``--per-expert ARCH``: also ARCH with its fused
experts decomposed into per-expert linears (the original report's Gemma-4 layout).

Phase 2 (vLLM side, ``PYTHONPATH=$VLLM_SITE:<repo>``, the vllm-kit install):
``python -m modelopt_fork.matrix.vllm_engine`` loads each checkpoint with the emulation backends
(in the checkpoint's dtype) and with vLLM's default kernels (Marlin, bf16), and one unquantized
checkpoint per architecture (the unquantized noise floor). Several engine processes share the GPU.

Phase 3: one table row per cell (:func:`modelopt_fork.matrix.vllm_stage.grade`): loads (emulation /
Marlin), mean and max |delta log-prob| of vLLM vs the fake-quantized model, the cell's noise floor
and bound, the reference runtime vs vLLM, the validator's verdict. ``$OUT/vllm_matrix.md`` and
``$OUT/vllm_matrix.json``; exit 1 unless every cell loads in both and agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelopt_fork.bench.procs import run_worker  # noqa: E402

ARCHS = ["qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3", "gemma4-26b-a4b"]
CFGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG", "NVFP4_AWQ_FULL_CFG"]
SCENARIOS = ["full", "dark-experts", "per-channel-amax", "tiny-amax", "zero-channels"]
SHORT = {"NVFP4_DEFAULT_CFG": "nvfp4", "NVFP4_AWQ_LITE_CFG": "awq_lite", "NVFP4_AWQ_FULL_CFG": "awq_full"}
REAL = ["qwen3-30b-a3b", "gemma4-26b-a4b"]


def env_for(site: str, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, str(ROOT)) if p)
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def export_phase(cells, out: Path, jobs: int, mo_site: str, device: str = "cuda") -> dict:
    recs = {}

    def one(cell):
        arch, cfg, scen, widths, experts, dtype, layout = cell
        d = out / cell_name(cell)
        cmd = [sys.executable, "-m", "modelopt_fork.matrix.vllm_stage", arch, cfg, scen, str(d), "--device", device,
               "--widths", widths, "--dtype", dtype]
        if experts:
            cmd += ["--experts", str(experts)]
        if layout == "per-expert":
            cmd.append("--unfuse-experts")
        elif cfg == CFGS[0] and scen == "full" and widths == "runtime":
            cmd.append("--save-unquantized")
        got = []
        # cwd outside the checkout: ``python -m`` puts the cwd first on sys.path, which would shadow
        # a modelopt tree given first on PYTHONPATH (e.g. a base series to compare with)
        rc, tail = run_worker(cmd, env=env_for(mo_site), cwd=out, log_path=d.parent / f"{d.name}.export.log",
                              on_result=got.append, timeout=900)
        rec = got[0] if got else {"exported": False, "error": f"worker exit {rc}: {tail.splitlines()[-1:]}"}
        rec["dir"] = str(d)
        recs[cell] = rec
        print(f"  export {cell_name(cell):60s} {'ok' if rec.get('exported') else rec.get('error')}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, cells))
    return recs


def _is_mla(ckpt: Path) -> bool:
    config = json.loads((ckpt / "config.json").read_text())
    return bool((config.get("text_config") or config).get("kv_lora_rank"))


def cell_name(cell) -> str:
    arch, cfg, scen, widths, experts, dtype, layout = cell
    name = f"{arch}__{SHORT[cfg]}__{scen}__{widths}{'-e' + str(experts) if experts else ''}__{dtype}"
    return name + ("__per-expert" if layout == "per-expert" else "")


def vllm_phase(jobs_list, out: Path, nproc: int, vllm_site: str) -> dict:
    """``jobs_list``: (ckpt dir, backend, extra env) -> {(ckpt, backend): record}."""
    groups: dict[tuple, list[str]] = {}
    for ckpt, backend, extra in jobs_list:
        groups.setdefault((backend, tuple(sorted(extra.items()))), []).append(str(ckpt))
    work = []  # (backend, extra, [ckpts]) split into nproc-ish chunks
    for (backend, extra), ckpts in groups.items():
        n = max(1, round(nproc * len(ckpts) / max(1, len(jobs_list))))
        for i in range(n):
            chunk = ckpts[i::n]
            if chunk:
                work.append((backend, dict(extra), chunk))
    results: dict = {}

    def one(item):
        backend, extra, ckpts = item
        todo = list(ckpts)
        tries = 0
        while todo and tries < 3:  # an engine process that dies takes the rest to a fresh one
            tries += 1
            got = []
            log = out / "logs" / f"vllm_{backend}_{abs(hash(tuple(todo))) % 10**8}.log"
            run_worker([sys.executable, "-m", "modelopt_fork.matrix.vllm_engine", "--backend", backend, *todo],
                       env=env_for(vllm_site, **extra), cwd=out, log_path=log, on_result=got.append, timeout=1200)
            for r in got:
                results[(r["ckpt"], backend)] = r
            done = {r["ckpt"] for r in got}
            todo = [c for c in todo if c not in done]
        for c in todo:
            results[(c, backend)] = {"ckpt": c, "backend": backend, "loaded": False, "error": "engine process died"}

    with ThreadPoolExecutor(len(work) or 1) as pool:
        list(pool.map(one, work))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--archs", nargs="*", default=ARCHS)
    ap.add_argument("--cfgs", nargs="*", default=CFGS)
    ap.add_argument("--scenarios", nargs="*", default=SCENARIOS)
    ap.add_argument("--dtype", nargs="*", default=["float32"])
    ap.add_argument("--real", action="store_true", help="also the real-width 128-expert Qwen3 and Gemma-4 twins")
    ap.add_argument("--real-cfgs", nargs="*", default=CFGS)
    ap.add_argument("--per-expert", nargs="*", default=[], metavar="ARCH",
                    help="also these architectures with fused experts decomposed into per-expert linears "
                         "(the original report's Gemma-4 layout), every --cfgs x --scenarios x --dtype")
    ap.add_argument("--only-per-expert", action="store_true", help="only the --per-expert cells")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="where phase 1 runs (cpu: a dry run of the pipeline)")
    ap.add_argument("--no-vllm", action="store_true", help="phase 1 and 3 only")
    ap.add_argument("--vllm-jobs", type=int, default=6)
    ap.add_argument("--mo-site", default=os.environ.get("MO_SITE", "/tmp/mo-site"))
    ap.add_argument("--vllm-site", default=os.environ.get("VLLM_SITE", "/tmp/site"))
    ap.add_argument("--regrade", action="store_true",
                    help="grade the cells of an earlier run in --out again (its .npy files; no GPU), "
                         "rewrite its tables")
    a = ap.parse_args()
    out = a.out.resolve()
    if a.regrade:
        return regrade(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cells = [] if a.only_per_expert else [(arch, cfg, scen, "runtime", None, dt, "native") for dt in a.dtype
                                          for arch in a.archs for cfg in a.cfgs for scen in a.scenarios]
    cells += [(arch, cfg, scen, "runtime", None, dt, "per-expert") for dt in a.dtype for arch in a.per_expert
              for cfg in a.cfgs for scen in a.scenarios]
    if a.real:
        cells += [(arch, cfg, "full", "real", 128, "bfloat16", "native") for arch in REAL for cfg in a.real_cfgs]
    print(f"phase 1: {len(cells)} cells", flush=True)
    exported = export_phase(cells, out / "cells", a.jobs, a.mo_site, a.device)
    t1 = time.time()
    jobs = []
    for rec in exported.values():
        if not rec.get("exported"):
            continue
        ckpt = Path(rec["dir"]) / "ckpt"
        # MLA models run with ordinary attention: the kit has no FlashAttention, which vLLM's MLA
        # prefill needs (measured: '_vllm_fa2_C' has no attribute 'varlen_fwd'), and the Triton MLA
        # backend takes no float32
        mla = {"VLLM_MLA_DISABLE": "1"} if _is_mla(Path(rec["dir"]) / "ckpt") else {}
        jobs += [(ckpt, "emulation", mla), (ckpt, "auto", mla)]
        unq = Path(rec["dir"]) / "unquantized"
        if unq.is_dir():
            jobs.append((unq, "unquantized", mla))
    print(f"phase 2: {len(jobs)} engine loads", flush=True)
    loaded = {} if a.no_vllm else vllm_phase(jobs, out, a.vllm_jobs, a.vllm_site)
    t2 = time.time()

    from modelopt_fork.matrix.vllm_stage import grade

    rows = []
    for cell, rec in exported.items():
        d = Path(rec["dir"])
        row = {"cell": cell_name(cell), "arch": cell[0], "cfg": SHORT[cell[1]], "scenario": cell[2],
               "widths": cell[3], "dtype": cell[5], "layout": cell[6], "export": rec}
        if rec.get("exported"):
            ck = str(d / "ckpt")
            row["emulation"] = loaded.get((ck, "emulation"), {})
            row["auto"] = loaded.get((ck, "auto"), {})
            row["grade"] = grade(d, cell[5])
        rows.append(row)
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
           "python": platform.python_version(), "seconds": {"export": round(t1 - t0), "vllm": round(t2 - t1)}}
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        env["torch"] = torch.__version__
    except ImportError:
        pass
    return write_tables(out, rows, env)


def _passes(r) -> bool:
    return bool(r.get("emulation", {}).get("loaded") and r.get("auto", {}).get("loaded")
                and (r["grade"].get("agrees") or not r["grade"].get("gated")))


def write_tables(out: Path, rows: list, env: dict) -> int:
    n_ok = sum(_passes(r) for r in rows)
    md = table(rows, env, n_ok)
    (out / "vllm_matrix.md").write_text(md)
    (out / "vllm_matrix.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
    print(md)
    return 0 if n_ok == len(rows) else 1


def regrade(out: Path) -> int:
    """Grade an earlier run's cells again (``vllm_stage.grade`` on ``out/cells/<cell>``) and rewrite its tables."""
    from modelopt_fork.matrix.vllm_stage import grade

    data = json.loads((out / "vllm_matrix.json").read_text())
    for row in data["rows"]:
        if row["export"].get("exported"):
            row["grade"] = grade(out / "cells" / row["cell"], row["dtype"])
    data["env"]["regraded"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return write_tables(out, data["rows"], data["env"])


def _f(x, nd=3):
    return "" if x is None else (f"{x:.2e}" if 0 < abs(x) < 10 ** -nd else f"{x:.{nd}f}")


def table(rows, env, n_ok) -> str:
    lines = [f"vLLM stage: {n_ok}/{len(rows)} cells load (emulation and default kernels) and agree "
             f"(float32; bfloat16 cells: loading, agreement recorded, see vllm_stage.FLOAT32_BOUND); {env}", "",
             "| arch | cfg | scenario | widths | dtype | export | validate | emul | marlin | vLLM-fake mean | max | "
             "argmax | noise mean | bound | agrees | ref-vLLM mean | ref | unq vLLM-HF mean |",
             "|" + "---|" * 18]
    for r in rows:
        e, g = r["export"], r.get("grade", {})
        emul, auto = r.get("emulation", {}), r.get("auto", {})
        vf, vr = g.get("vllm_vs_fake", {}), g.get("vllm_vs_reference", {})
        lines.append("| " + " | ".join([
            r["arch"] + (" (per-expert)" if r.get("layout") == "per-expert" else ""), r["cfg"], r["scenario"],
            r["widths"], r["dtype"],
            "ok" if e.get("exported") else f"FAIL {e.get('error', '')[:80]}",
            ("ok" if not e.get("violations") else f"{len(e['violations'])}: {e['violations'][0][:60]}")
            if e.get("exported") else "",
            "ok" if emul.get("loaded") else (emul.get("error", "")[:80]),
            "ok" if auto.get("loaded") else (auto.get("error", "")[:80]),
            _f(vf.get("mean")), _f(vf.get("max")), _f(vf.get("argmax"), 2), _f(g.get("noise", {}).get("mean")),
            _f(g.get("bound")),
            {True: "yes", False: "NO"}.get(g.get("agrees"), "") + ("" if g.get("gated", True) else " (bf16, recorded)")
            + (f" ({g['tie_positions']} tie)" if g.get("tie_positions") else "")
            + (" floor NOT clean" if g.get("floor_clean") is False else ""),
            _f(vr.get("mean")),
            "ok" if e.get("reference") == "ok" else str(e.get("reference", ""))[:60],
            _f(g.get("unquantized_vllm_vs_hf", {}).get("mean")),
        ]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
