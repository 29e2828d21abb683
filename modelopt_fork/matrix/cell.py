"""Run one matrix cell: build twin -> scenario -> quantize -> fake-quant forward -> export -> check."""

from __future__ import annotations

import copy
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..bench.procs import first_line
from .axes import quant_config

STAGES = ("build", "calibrate", "forward", "export", "check", "validate", "reference", "runtime")
# stages after "check" that a caller may leave out (e.g. for upstream releases whose export
# internals the reference stage relies on do not exist)
OPTIONAL_STAGES = ("validate", "reference", "runtime")
# "runtime": the reference runtime in vLLM's convention (the scales vLLM collapses, its
# reciprocal activation quantization; it agrees with real vLLM 0.25.1 to ~1e-7 in log-prob,
# docs/vllm-stage.md) against the model as calibrated, before export: what the user measured.
# On CPU in float32 the two differ by float32 rounding (vLLM multiplies by reciprocals where
# ModelOpt divides), measured over every CPU cell of the matrix (transformers 5.14, 2026-12-01,
# scripts in docs/matrix.md): at most 3.4e-7 of the largest logit in 71 of 72 cells, 4.2e-3 in
# one (qwen3 AWQ-full awq-cache-only), where an activation on an E2M1 rounding boundary rounds
# the other way under the reciprocal and the 2-layer random twin amplifies it. What the gate is
# for, an export that changes what the model computes (fused siblings re-rounded at export,
# issue 14), measured on the series before the fix: 0.11-0.56 of the largest logit (NVFP4,
# every architecture), and AWQ checkpoints that vLLM refuses (leftover pre_quant_scale).
RUNTIME_REL_BOUND = 1e-2


def stages_for(device: str) -> tuple[str, ...]:
    """The optional stages the tests run on ``device``: on CUDA the reference-runtime stage is left
    out. The reference emulates the CPU fake quant bit for bit, while a CUDA-calibrated and
    CUDA-exported checkpoint carries the Triton kernel's and torch-on-CUDA's division roundings
    (1.2e-7-1.5e-7 on logits ~0.7, tests/gpu/RESULTS.md); the reference runtime's CUDA agreement
    has its own bound in tests/reference."""
    return OPTIONAL_STAGES if device == "cpu" else ("validate",)


def runtime_agreement(ckpt: Path, calibrated: torch.Tensor, ids: torch.Tensor) -> dict:
    """The reference runtime in vLLM's convention vs the calibrated model's logits (see RUNTIME_REL_BOUND)."""
    from ..reference.compare import agreement, logits
    from ..reference.runtime import load_reference_model

    a = agreement(logits(load_reference_model(ckpt, convention="vllm"), ids), calibrated.float().cpu())
    if a["max_abs_err"] > RUNTIME_REL_BOUND * a["max_abs_ref"]:
        raise StageFailure([f"the reference runtime in vLLM's convention differs from the calibrated model: max abs "
                            f"{a['max_abs_err']:.3g} of {a['max_abs_ref']:.3g} (bound {RUNTIME_REL_BOUND:g} of the "
                            f"largest logit), cosine {a['cosine']:.6f}"])
    return {"vs_calibrated_max_abs": a["max_abs_err"], "vs_calibrated_rel": a["max_abs_err"] / a["max_abs_ref"],
            "bit_exact": a["bit_exact"]}


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
    passed: list = field(default_factory=list)  # stages that passed, in order
    info: dict = field(default_factory=dict)  # per stage: figures (scales, agreement, ...)
    cosine_vs_original: float | None = None
    seconds: float = 0.0
    detail: str = ""  # full traceback or problem list of a failure

    def to_dict(self) -> dict:
        return asdict(self)


class StageFailure(Exception):
    """A stage's checks found problems (listed); not an exception of the code under test."""

    def __init__(self, problems: list[str]):
        super().__init__(problems[0])
        self.problems = problems


def fake_as_exported(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a copy of the calibrated model after export's pre-packing steps.

    Export unifies the scales of linears sharing an input, folds AWQ pre_quant_scale and
    fills uncalibrated expert inputs before packing; the checkpoint holds that model, so
    the reference runtime is compared with it (see tests/reference/test_runtime.py).
    """
    from modelopt.torch.export.unified_export_hf import (
        _prepare_moe_inputs,
        requantize_resmooth_fused_llm_layers,
    )

    from ..reference.compare import logits

    m = copy.deepcopy(model)
    _prepare_moe_inputs(m, torch.float32, False)
    requantize_resmooth_fused_llm_layers(m)
    return logits(m, ids)


# Reference runtime vs the fake-quantized model as exported, both on CPU: the same float32
# operations in the same order, so bit-exact (tests/reference/test_runtime.py). A checkpoint
# exported on CUDA is checked the same way (its calibrated model is copied to CPU).
def reference_agreement(ckpt: Path, as_exported, original, ids) -> dict:
    from ..reference.compare import compare

    r = compare(ckpt, as_exported, ids, original, device="cpu")
    vs = r["vs_fake"]
    if not vs["bit_exact"]:
        raise StageFailure([f"reference runtime logits differ from the fake-quantized model as "
                            f"exported: max abs {vs['max_abs_err']:.3g} of {vs['max_abs_ref']:.3g}, "
                            f"cosine {vs['cosine']:.6f} (expected bit-exact on CPU)"])
    return {"vs_fake_max_abs": vs["max_abs_err"], "vs_fake_bit_exact": vs["bit_exact"],
            "vs_original_cosine": r["vs_original"]["cosine"],
            "vs_original_max_abs": r["vs_original"]["max_abs_err"]}


def scale_stats(ckpt: Path) -> dict:
    """Ranges of the exported per-tensor scales (what preflight reports)."""
    from ..checkpoint.load import load_tensors

    t = load_tensors(ckpt)
    out = {}
    for suffix in ("input_scale", "weight_scale_2"):
        vals = [x.float().reshape(()) for k, x in t.items() if k.endswith(suffix) and x.numel() == 1]
        if vals:
            v = torch.stack(vals)
            out[suffix] = {"count": v.numel(), "min": v.min().item(), "max": v.max().item()}
    out["quantized_weights"] = sum(1 for k, x in t.items() if k.endswith(".weight") and x.dtype == torch.uint8)
    return out


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
             seed: int = 0, num_experts=None, stages=OPTIONAL_STAGES, on_stage=None,
             fold_pre_quant_scale: bool | None = None, unfuse_experts: bool = False) -> CellResult:
    """Run one cell. Never raises for a failure of the code under test: the result says it.

    ``stages``: which of OPTIONAL_STAGES run after the structural check. ``on_stage(name)``
    is called as each stage starts (progress display). ``fold_pre_quant_scale=False`` (AWQ
    configs): export TensorRT-LLM's NVFP4_AWQ form, which keeps the AWQ pre_quant_scale
    tensors; it is validated for TensorRT-LLM only and has no vLLM-convention runtime stage.
    ``unfuse_experts``: decompose transformers 5 fused experts into per-expert linears first
    (:func:`..twin.unfuse.decompose_fused_experts`), as users do for per-expert AWQ.
    """
    import transformers

    from ..twin import build_twin
    from ..twin.scenarios import make

    res = CellResult(arch, cfg, scenario, device, transformers.__version__)
    t0 = time.perf_counter()
    stage = ""

    def begin(name):
        nonlocal stage
        if stage:
            res.passed.append(stage)
        stage = name
        if on_stage:
            on_stage(name)

    begin("build")
    try:
        twin = build_twin(arch, seed=seed, device=device, num_experts=num_experts)
        if unfuse_experts:
            from ..twin.unfuse import decompose_twin_experts

            decompose_twin_experts(twin)
        scen = make(scenario, twin, seed=seed)
        scen.prepare(twin)
        res.dark_experts = _coverage(twin, scen)
        ids = scen.eval_ids.to(device)
        with torch.no_grad():
            original = twin.model(ids).logits.float()

        begin("calibrate")
        import modelopt.torch.quantization as mtq

        mtq.quantize(twin.model, quant_config(cfg, fold_pre_quant_scale=fold_pre_quant_scale),
                     scen.forward_loop)
        scen.after_calibration(twin)

        begin("forward")
        with torch.no_grad():
            fake = twin.model(ids).logits.float()
        if not torch.isfinite(fake).all():
            raise AssertionError("fake-quantized logits are not finite")
        res.cosine_vs_original = float(torch.nn.functional.cosine_similarity(
            fake.flatten(), original.flatten(), dim=0))
        as_exported = None
        if "reference" in stages:
            # The reference runtime emulates the CPU fake quant exactly; on CUDA the calibrated
            # model is copied to CPU for that comparison (the Triton kernel rounds divisions
            # approximately, tests/gpu/RESULTS.md), and the CUDA-vs-CPU gap is reported.
            cpu_model = twin.model if device == "cpu" else copy.deepcopy(twin.model).cpu()
            as_exported = fake_as_exported(cpu_model, ids.cpu())
            if device != "cpu":
                with torch.no_grad():
                    gap = (fake.cpu() - cpu_model(ids.cpu()).logits.float()).abs().max().item()
                res.info["cuda_vs_cpu_fake_max_abs"] = gap
                del cpu_model

        begin("export")
        from modelopt.torch.export import export_hf_checkpoint

        ckpt = Path(out_dir) / "ckpt"
        export_hf_checkpoint(twin.model, export_dir=ckpt)

        begin("check")
        from .checks import structural_problems

        problems = structural_problems(ckpt, cfg, [b.experts_name for b in twin.moe_blocks])
        if problems:
            raise StageFailure(problems)
        res.info["check"] = scale_stats(ckpt)
        if "validate" in stages:
            begin("validate")
            from ..checkpoint.validate import validate_checkpoint

            violations = validate_checkpoint(
                ckpt, runtimes=("tensorrt-llm",) if fold_pre_quant_scale is False else None)
            if violations:
                raise StageFailure([v.format() for v in violations])
        if "reference" in stages:
            begin("reference")
            res.info["reference"] = reference_agreement(ckpt, as_exported, original.cpu(), ids.cpu())
        if "runtime" in stages and fold_pre_quant_scale is not False:
            begin("runtime")
            res.info["runtime"] = runtime_agreement(ckpt, fake, ids.cpu())
        res.passed.append(stage)
        res.ok = True
    except StageFailure as e:
        res.stage, res.error, res.detail = stage, e.problems[0][:240], "\n".join(e.problems)
    except Exception as e:  # noqa: BLE001 -- a cell reports, the matrix goes on
        res.stage, res.error, res.detail = stage, first_line(e), traceback.format_exc()
    res.seconds = round(time.perf_counter() - t0, 2)
    return res
