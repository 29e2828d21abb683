"""Run one matrix cell: build twin -> scenario -> quantize -> fake-quant forward -> export -> check."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

STAGES = ("build", "calibrate", "forward", "export", "check")


@dataclass
class CellResult:
    arch: str
    cfg: str
    scenario: str
    device: str
    transformers: str
    ok: bool = False
    stage: str = ""  # the stage that failed ("" when ok)
    error: str = ""  # first line of the failure
    dark_experts: dict = field(default_factory=dict)  # calibration pass -> unrouted experts
    cosine_vs_original: float | None = None
    seconds: float = 0.0
    detail: str = ""  # full traceback or problem list of a failure

    def to_dict(self) -> dict:
        return asdict(self)


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:240]


def _coverage(twin, scenario) -> dict:
    """For each distinct calibration batch of the scenario: experts routed no token, per block."""
    from ..twin.moe import count_routed_tokens

    out = {}
    batches = getattr(scenario.forward_loop, "batches", None) or []
    for i, ids in enumerate(batches):
        with torch.no_grad(), count_routed_tokens(twin.moe_blocks) as counts:
            twin.model(ids.to(next(twin.model.parameters()).device))
        dark = {k: int((v == 0).sum()) for k, v in counts.items()}
        out[f"pass{i}"] = sum(dark.values())
    return out


def run_cell(arch: str, cfg: str, scenario: str, *, device: str = "cpu", out_dir: Path,
             seed: int = 0, num_experts=None, extra_checks=None) -> CellResult:
    """Run one cell. Never raises for a failure of the code under test: the result says it."""
    import transformers

    from ..twin import build_twin
    from ..twin.scenarios import make

    res = CellResult(arch, cfg, scenario, device, transformers.__version__)
    t0 = time.perf_counter()
    stage = "build"
    try:
        twin = build_twin(arch, seed=seed, device=device, num_experts=num_experts)
        scen = make(scenario, twin, seed=seed)
        scen.prepare(twin)
        res.dark_experts = _coverage(twin, scen)
        ids = scen.eval_ids.to(device)
        with torch.no_grad():
            original = twin.model(ids).logits.float()

        stage = "calibrate"
        import modelopt.torch.quantization as mtq

        mtq.quantize(twin.model, getattr(mtq, cfg), scen.forward_loop)
        scen.after_calibration(twin)

        stage = "forward"
        with torch.no_grad():
            fake = twin.model(ids).logits.float()
        if not torch.isfinite(fake).all():
            raise AssertionError("fake-quantized logits are not finite")
        res.cosine_vs_original = float(torch.nn.functional.cosine_similarity(
            fake.flatten(), original.flatten(), dim=0))

        stage = "export"
        from modelopt.torch.export import export_hf_checkpoint

        ckpt = Path(out_dir) / "ckpt"
        export_hf_checkpoint(twin.model, export_dir=ckpt)

        stage = "check"
        from .checks import structural_problems

        problems = structural_problems(ckpt, cfg, [b.experts_name for b in twin.moe_blocks])
        for check in extra_checks or ():
            problems += check(ckpt, twin, ids, fake)
        if problems:
            res.error, res.detail = problems[0][:240], "\n".join(problems)
            res.stage = stage
        else:
            res.ok = True
    except Exception as e:  # noqa: BLE001 -- a cell reports, the matrix goes on
        res.stage, res.error, res.detail = stage, first_line(e), traceback.format_exc()
    res.seconds = round(time.perf_counter() - t0, 2)
    return res
