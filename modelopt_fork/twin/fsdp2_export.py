"""Calibrate and export a saved model under FSDP2: one rank's work, and a runnable worker.

    python -m torch.distributed.run --standalone --nproc-per-node N -m modelopt_fork.twin.fsdp2_export \
        --src MODEL_DIR --ids IDS.pt --dst EXPORT_DIR [--cfg NVFP4_DEFAULT_CFG] [--device cpu|cuda]

Without ``torch.distributed.run`` (no ``RANK`` in the environment) it runs as a world of one
process, which is enough to exercise FSDP2's parameter bookkeeping and its full state-dict
gather. The model is wrapped the way modelopt's own FSDP2 tests do (``fsdp2_wrap``: every
decoder layer and the root, under ``patch_fsdp_mp_dtypes``); CPU uses gloo, CUDA NCCL (one GPU
per rank). Rank 0 prints one ``RESULT {json}`` line (:func:`modelopt_fork.bench.procs.emit`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch


def calibrate_and_export(model, ids: torch.Tensor, cfg: str, dst: Path, rec: dict) -> None:
    """``mtq.quantize`` with ``ids`` as the only calibration batch, then ``export_hf_checkpoint``.

    Records ``stage`` (where a failure happened), ``calibrate_s`` and ``export_s`` in ``rec``.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    first = next(p.device for p in model.parameters() if p.device.type != "meta")
    ids = ids.to(first)

    def loop(m):
        with torch.no_grad():
            m(input_ids=ids, use_cache=False)

    t0 = time.perf_counter()
    rec["stage"] = "calibrate"
    mtq.quantize(model, getattr(mtq, cfg), loop)
    rec["calibrate_s"] = time.perf_counter() - t0
    rec["stage"] = "export"
    t0 = time.perf_counter()
    export_hf_checkpoint(model, export_dir=dst)
    rec["export_s"] = time.perf_counter() - t0
    rec["stage"] = "done"


def _init_process_group(device: str) -> None:
    import torch.distributed as dist

    backend = "gloo" if device == "cpu" else "nccl"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" in os.environ:  # launched by torch.distributed.run
        dist.init_process_group(backend)
    else:  # a world of one, rendezvous through a private file
        store = Path(tempfile.mkdtemp(prefix="fsdp2-store-")) / "store"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


def export_fsdp2(src: Path, ids: torch.Tensor, cfg: str, dst: Path, *, device: str = "cpu",
                 dtype: torch.dtype = torch.bfloat16) -> dict | None:
    """Load ``src``, shard it with FSDP2, calibrate with ``ids`` and export to ``dst`` (collective).

    The process group must be initialized. Returns the record on rank 0 (``error`` set, with the
    failing rank, if any rank failed), ``None`` on the other ranks.
    """
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from modelopt.torch.quantization.utils import patch_fsdp_mp_dtypes
    from modelopt.torch.utils.distributed import fsdp2_wrap, is_fsdp2_model
    from modelopt_fork.bench.procs import first_line

    rank = dist.get_rank()
    rec: dict = dict(case="fsdp2", world=dist.get_world_size(), torch=torch.__version__)
    target = "cpu" if device == "cpu" else f"cuda:{torch.cuda.current_device()}"
    try:
        with patch_fsdp_mp_dtypes():
            rec["stage"] = "load"
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval().to(target)
            rec["stage"] = "fsdp2_wrap"
            fsdp2_wrap(model)
            if not is_fsdp2_model(model):
                raise RuntimeError("fsdp2_wrap did not shard the model")
            rec["devices"] = sorted({str(p.device) for p in model.parameters()})
            dist.barrier()
            calibrate_and_export(model, ids, cfg, dst, rec)
            dist.barrier()
    except Exception as e:  # noqa: BLE001 -- every rank reports; rank 0 returns the first error
        rec["error"] = f"rank {rank}: {first_line(e)}"
        rec["trace"] = traceback.format_exc()[-4000:]
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, rec.get("error"))
    if any(errors) and not rec.get("error"):
        rec["error"] = next(e for e in errors if e)
    return rec if rank == 0 else None


def main(argv=None) -> int:
    import torch.distributed as dist

    from modelopt_fork.bench.procs import check_modelopt_origin, emit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="a save_pretrained directory")
    ap.add_argument("--ids", type=Path, required=True, help="calibration input ids (torch.save'd tensor)")
    ap.add_argument("--dst", type=Path, required=True)
    ap.add_argument("--cfg", default="NVFP4_DEFAULT_CFG")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    origin = check_modelopt_origin()
    _init_process_group(args.device)
    try:
        rec = export_fsdp2(args.src, torch.load(args.ids), args.cfg, args.dst, device=args.device,
                           dtype=getattr(torch, args.dtype))
    finally:
        dist.destroy_process_group()
    if rec is not None:
        emit(dict(rec, modelopt=origin))
    return 0


if __name__ == "__main__":
    code = main()
    # Leave without interpreter teardown: the result is emitted and every file is closed, and a
    # native thread still alive at exit (seen once on a loaded 2-core CI machine: "terminate called
    # without an active exception", exit -6 after the shards were written) must not fail the run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
