"""Peak extra host memory of save_calibration_rescue, before (0007's first version) and now (0022).

Usage:
    python benchmarks/rescue_host_memory.py            # every (implementation, placement), a table
    python benchmarks/rescue_host_memory.py --impl after --placement disk   # one, as JSON

A Qwen3-MoE twin built from a config (seeded random weights, float32; --hidden, --layers,
--experts, --moe-intermediate), quantized with NVFP4_DEFAULT_CFG on one batch, the rescue saved
as after a weight-changing calibration (``_calibration_mutates_weights`` forced true, so that both
implementations save the same tensors: every quantized module's parameters, as after AWQ) with the
model resident on the CPU ("resident"), or with every decoder layer but the first offloaded to
"disk" by accelerate after quantization ("disk": those weights are only in the offload files, as
for a GPU-resident model they are only in GPU memory) or before it ("disk-calibrated":
calibration's writeback keeps the offloaded weights in host memory, accelerate's disk writeback
being a TODO of ModelOpt's). Each measurement runs in a fresh process. Peak extra memory = the highest resident
set size while ``save_calibration_rescue`` runs (sampled every millisecond from /proc/self/statm,
and the kernel's own peak VmHWM after resetting it through /proc/self/clear_refs where that
works) minus the resident set size just before it; RssAnon likewise (what the process allocated,
without file pages such as an accelerate offload memmap).

``before`` is export/calibration_rescue.py of the first 0007 (commit 22fbc42, read with
``git show``): it gathered every quantized module's weights onto the host (``.cpu()``, a no-op
for a CPU tensor but a kept reference for a tensor materialized from an offload hook), then
``torch.save``. ``after`` is the installed series' module (0022): one tensor at a time, through
64 MiB host chunks.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's modelopt/ (the series), not an installed one
BEFORE_COMMIT = "22fbc42"
BEFORE_PATCH = "patches/0007-export-rescue-calibration-state.patch"
PAGE = os.sysconf("SC_PAGE_SIZE")
PLACEMENTS = ["resident", "disk", "disk-calibrated"]


def _before_module(tmp: Path):
    """calibration_rescue.py as the first 0007 added it, imported as a separate module."""
    text = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:{BEFORE_PATCH}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    section = text.split("diff --git a/modelopt/torch/export/calibration_rescue.py", 1)[1].split("\ndiff --git", 1)[0]
    body = section.split("\n@@", 1)[1].split("\n", 1)[1]
    source = "\n".join(line[1:] for line in body.splitlines() if line.startswith("+")) + "\n"
    path = tmp / "calibration_rescue_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("calibration_rescue_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak_rss = _rss()
        self.peak_anon = _status("RssAnon")

    def run(self):
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss())
            self.peak_anon = max(self.peak_anon, _status("RssAnon"))
            time.sleep(0.001)


def _model(args):
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=256, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        moe_intermediate_size=args.moe_intermediate, num_hidden_layers=args.layers,
        num_attention_heads=8, num_key_value_heads=4, head_dim=args.hidden // 8,
        num_experts=args.experts, num_experts_per_tok=2, max_position_embeddings=128)
    config.architectures = ["Qwen3MoeForCausalLM"]
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def measure(args) -> dict:
    import torch

    import modelopt.torch.export.calibration_rescue as after
    import modelopt.torch.quantization as mtq

    tmp = Path(tempfile.mkdtemp(prefix="rescue-mem-"))
    impl = after if args.impl == "after" else _before_module(tmp)
    model = _model(args)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))

    def offload(model):
        from accelerate import dispatch_model

        device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
                      "model.layers.0": "cpu"}
        device_map.update({f"model.layers.{i}": "disk" for i in range(1, args.layers)})
        return dispatch_model(model, device_map=device_map, offload_dir=str(tmp / "offload"))

    if args.placement == "disk-calibrated":
        model = offload(model)  # calibration's writeback keeps the offloaded weights in host memory
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(ids))
    if args.placement == "disk":
        model = offload(model)  # the quantized weights of layers 1.. only in the offload files
    impl._calibration_mutates_weights = lambda m: True  # save the weights, as after AWQ
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                  if re.search(r"layers\.\d+\.(self_attn|mlp)\.", n) and "gate.weight" not in n)

    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back: growth is then new memory
    base_rss, base_anon = _rss(), _status("RssAnon")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    path = impl.save_calibration_rescue(model, tmp / "rescue")
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    hwm = _status("VmHWM") if hwm_reset else -1
    assert Path(after.__file__).is_relative_to(ROOT), after.__file__
    return {
        "impl": args.impl, "placement": args.placement, "seconds": round(seconds, 2),
        "quantized_weights_mib": round(weights / 2**20, 1), "file_mib": round(path.stat().st_size / 2**20, 1),
        "peak_extra_rss_mib": round((sampler.peak_rss - base_rss) / 2**20, 1),
        "peak_extra_anon_mib": round((sampler.peak_anon - base_anon) / 2**20, 1),
        "peak_extra_vmhwm_mib": round((hwm - base_rss) / 2**20, 1) if hwm_reset else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["before", "after"])
    parser.add_argument("--placement", choices=PLACEMENTS)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--moe-intermediate", type=int, default=512)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(measure(args)))
        return 0
    sizes = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--experts", str(args.experts),
             "--moe-intermediate", str(args.moe_intermediate)]
    rows = []
    for placement in PLACEMENTS:
        for impl in ["before", "after"]:
            out = subprocess.run([sys.executable, __file__, "--impl", impl, "--placement", placement, *sizes],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
