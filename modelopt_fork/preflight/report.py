"""Run the preflight stages on a twin and format the report."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..matrix.cell import STAGES, CellResult, run_cell

QFORMATS = {"nvfp4": "NVFP4_DEFAULT_CFG", "nvfp4_awq_lite": "NVFP4_AWQ_LITE_CFG",
            "nvfp4_awq_full": "NVFP4_AWQ_FULL_CFG"}


def preflight(model: str, qformat: str, *, device: str = "cpu", num_experts=None, seed: int = 0,
              out_dir: Path | None = None, progress: bool = True) -> CellResult:
    from tqdm import tqdm

    bar = tqdm(total=len(STAGES), desc="preflight", unit="stage", disable=not progress, leave=False)

    def on_stage(name):
        bar.set_postfix_str(name)
        bar.n = STAGES.index(name)
        bar.refresh()

    with tempfile.TemporaryDirectory(prefix="modelopt-fork-preflight-") as tmp:
        res = run_cell(str(model), QFORMATS[qformat], "full", device=device, num_experts=num_experts,
                       seed=seed, out_dir=Path(out_dir or tmp), on_stage=on_stage)
    bar.n = len(STAGES) if res.ok else STAGES.index(res.stage)
    bar.close()
    return res


def format_report(res: CellResult, model: str, qformat: str) -> str:
    lines = [f"preflight {model} --qformat {qformat} ({res.device}, transformers {res.transformers}, "
             f"{res.seconds:.1f} s)"]
    for s in STAGES:
        if s in res.passed:
            lines.append(f"  [pass] {s}")
        elif s == res.stage:
            lines.append(f"  [FAIL] {s}: {res.error}")
        else:
            lines.append(f"  [ -- ] {s}: not reached")
    if res.dark_experts:
        n = res.dark_experts.get("pass0", 0)
        lines.append(f"experts with no calibration tokens: {n}"
                     + (" (export fills their input amax from calibrated siblings)" if n else ""))
    chk = res.info.get("check", {})
    for k in ("input_scale", "weight_scale_2"):
        if k in chk:
            lines.append(f"{k}: {chk[k]['count']} scalars in [{chk[k]['min']:.3g}, {chk[k]['max']:.3g}]")
    if "quantized_weights" in chk:
        lines.append(f"quantized weights: {chk['quantized_weights']}")
    ref = res.info.get("reference")
    if ref:
        lines.append(f"reference runtime vs fake-quant model: max abs {ref['vs_fake_max_abs']:.3g}"
                     f" ({'bit-exact' if ref['vs_fake_bit_exact'] else 'not bit-exact'})")
        lines.append(f"error vs unquantized: logits cosine {ref['vs_original_cosine']:.4f}, "
                     f"max abs {ref['vs_original_max_abs']:.3g}")
    lines.append("result: " + ("PASS" if res.ok else f"FAIL at {res.stage}"))
    if not res.ok and res.detail:
        lines.append("detail (last lines):")
        lines += ["  " + x for x in res.detail.strip().splitlines()[-8:]]
    return "\n".join(lines)
