"""The reference NVFP4 runtime (modelopt_fork.reference) against the fork's fake-quantized model.

For every tiny twin and NVFP4 config: calibrate, export, load the checkpoint into the reference
runtime and compare logits with the fake-quantized model in the state export quantizes it.

Why "in the state export quantizes it": before packing, export unifies the scales of linears
that share an input (q/k/v, gate/up: one ``weight_scale_2`` and ``input_scale`` per group, as
runtimes fuse them), folds AWQ ``pre_quant_scale`` into the preceding layernorm or linear and
resmooths (``requantize_resmooth_fused_llm_layers``), and fills uncalibrated expert inputs
(``_prepare_moe_inputs``). The model as calibrated differs from its checkpoint by exactly those
steps (measured: logits of ~0.6 move by 0.05-0.63 max abs, see docs/reference-runtime.md), so the
test applies them to a copy of the calibrated model and compares with that copy.

Tolerance on CPU: none (rtol=0, atol=0). The reference computes the same float32 operations
in the same order: the dequantized weight ``E2M1 * (fp8 * weight_scale_2)`` equals the fake
quant of the weight with the same global scale element for element (tests/reference/test_nvfp4.py),
the activation quantization is bit-exact with the CPU fake quant for the same global scale
(``input_scale`` is written as ``amax / (6 * 448)``, the division the fake quant does), AWQ
scales are folded in the fake copy exactly as in the checkpoint, and each matmul has the same
operands and shape. Measured: bit-identical logits for every arch x config here.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from _utils.devices import DEVICES
from _utils.tiny_moe import ARCHS, TRANSFORMERS_5, build, calib_ids
from modelopt_fork.matrix.cell import fake_as_exported
from modelopt_fork.reference.compare import compare, logits
from modelopt_fork.reference.runtime import (
    ReferenceFusedExperts,
    ReferenceLinear,
    ReferenceLoadError,
    load_checkpoint_tensors,
    load_reference_model,
)
from modelopt_fork.twin import BUNDLED, build_twin
from modelopt_fork.twin.build import calib_ids as twin_ids

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"]
TWINS = [n for n in BUNDLED if TRANSFORMERS_5 or n != "gemma4-26b-a4b"]  # Gemma-4 needs transformers >= 5


def _fake_as_exported(model, ids):
    """Logits of a copy of the calibrated model after export's pre-packing steps (see module doc)."""
    return fake_as_exported(model, ids)


def _quantize_export(arch, cfg, device, out, seed):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    model = build(arch, seed=seed, device=device)
    calib = calib_ids(seed=seed).to(device)
    ids = calib_ids(seed=seed + 1)  # evaluate on other tokens than calibration (saturation paths too)
    original = logits(model, ids)
    mtq.quantize(model, getattr(mtq, cfg), lambda m: m(calib))
    calibrated = logits(model, ids)
    fake = _fake_as_exported(model, ids)
    export_hf_checkpoint(model, export_dir=out)
    return ids, original, calibrated, fake


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_reference_matches_fake_quant(arch, cfg, device, tmp_path):
    ckpt = tmp_path / "ckpt"
    ids, original, calibrated, fake = _quantize_export(arch, cfg, device, ckpt, seed=11)
    r = compare(ckpt, fake, ids, original, device=device)
    _assert_reference_agrees(ckpt, ids, fake, r, device)
    # quantization did something, and not beyond recognition (random 2-layer twins; see
    # docs/reference-runtime.md for the measured values, Gemma-4 lowest)
    assert not r["vs_original"]["bit_exact"]
    assert r["vs_original"]["cosine"] > 0.5, r
    assert not torch.equal(calibrated, original)


def _assert_reference_agrees(ckpt, ids, fake, r, device):
    """Reference runtime vs the fake-quantized model as exported: bit-exact on CPU, bounded on CUDA."""
    if device == "cpu":
        torch.testing.assert_close(logits(load_reference_model(ckpt), ids), fake, rtol=0, atol=0)
        assert r["vs_fake"]["bit_exact"], r
    else:
        # The CUDA fake quant (Triton kernel) divides approximately (up to 2 ulp), the reference
        # exactly: values within 2 ulp of an E2M1/FP8 rounding boundary may land on the
        # neighbouring code (tests/gpu/RESULTS.md), one quantization step of one element, which
        # the next layers carry on. Bound: 2% of the largest logit; a wrong scale or a misplaced
        # expert moves logits by the size of the logits (cosine << 0.99). Measured on an H100:
        # bit-identical for every arch x config x seed 11-13 (docs/reference-runtime.md).
        assert r["vs_fake"]["max_abs_err"] <= 0.02 * r["vs_fake"]["max_abs_ref"], r
        assert r["vs_fake"]["cosine"] > 0.999, r


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TWINS)
def test_reference_matches_fake_quant_on_bundled_twins(name, device, tmp_path):
    """AWQ-lite on float32 twins of the bundled real configs (which say bfloat16).

    AWQ multiplies weights by its scales in float32, so the smoothed weights are no longer
    bfloat16 values. ModelOpt's export packs ``weight.to(config.dtype)``: while the twin's config
    still said bfloat16, the checkpoint held the smoothed weights rounded to bfloat16 before NVFP4
    rounding (elements near an E2M1 boundary one step off; the matrix cells with 16 experts
    measured logits off by 0.07 max abs on the Qwen3 twin, 0.43 on the Gemma-4 one), not the
    calibrated model. 4 experts, top-2: small, and the attention and
    shared/dense linears are smoothed whatever the expert count. Same bounds as above.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    twin = build_twin(name, seed=11, device=device, num_experts=4, top_k=2)
    calib = twin_ids(twin.vocab_size, seed=11).to(device)
    ids = twin_ids(twin.vocab_size, seed=12)
    mtq.quantize(twin.model, mtq.NVFP4_AWQ_LITE_CFG, lambda m: m(calib))
    fake = _fake_as_exported(twin.model, ids)
    ckpt = tmp_path / "ckpt"
    export_hf_checkpoint(twin.model, export_dir=ckpt)
    r = compare(ckpt, fake, ids, device=device)
    _assert_reference_agrees(ckpt, ids, fake, r, device)


@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_convention_is_close(arch, tmp_path):
    """vLLM / TensorRT-LLM's reciprocal-multiply activation quant vs ModelOpt's division.

    Values differ by at most 2 eps relative (different dequant order) except near a rounding
    boundary, so logits differ at float32 rounding level (measured: <= 1.8e-7 max abs on logits
    of ~0.6). Bound 1e-4 of the largest logit: a convention bug (e.g. scaling by input_scale
    instead of 1/input_scale) changes logits by their own size.
    """
    ckpt = tmp_path / "ckpt"
    ids, _, _, fake = _quantize_export(arch, "NVFP4_DEFAULT_CFG", "cpu", ckpt, seed=21)
    r = compare(ckpt, fake, ids, convention="runtime")
    assert r["vs_fake"]["max_abs_err"] <= 1e-4 * r["vs_fake"]["max_abs_ref"], r


@pytest.mark.parametrize("arch", ARCHS)
def test_every_quantized_tensor_is_placed(arch, tmp_path):
    ckpt = tmp_path / "ckpt"
    _quantize_export(arch, "NVFP4_DEFAULT_CFG", "cpu", ckpt, seed=3)
    tensors = load_checkpoint_tensors(ckpt)
    packed = {k[: -len(".weight")] for k, v in tensors.items() if k.endswith(".weight") and v.dtype == torch.uint8}
    model = load_reference_model(ckpt)
    placed = [m.name for m in model.modules() if isinstance(m, ReferenceLinear)]
    fused = [m for m in model.modules() if isinstance(m, ReferenceFusedExperts)]
    placed += [n for m in fused for n in m.sources]
    assert sorted(placed) == sorted(packed)
    assert bool(fused) == TRANSFORMERS_5
    assert not any(type(m) is torch.nn.Linear and ".experts." in n for n, m in model.named_modules())


def _corrupt(ckpt, fn):
    f = next(ckpt.glob("*.safetensors"))
    t = load_file(f)
    fn(t)
    save_file(t, f, metadata={"format": "pt"})


def test_unplaceable_quantized_tensor_fails_loudly(tmp_path):
    ckpt = tmp_path / "ckpt"
    _quantize_export(ARCHS[0], "NVFP4_DEFAULT_CFG", "cpu", ckpt, seed=4)
    key = next(k for k, v in load_checkpoint_tensors(ckpt).items() if k.endswith("self_attn.q_proj.weight"))
    base = key[: -len(".weight")]
    bogus = base.replace("q_proj", "nonexistent_proj")

    def rename(t):
        for s in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
            t[f"{bogus}.{s}"] = t.pop(f"{base}.{s}")

    _corrupt(ckpt, rename)
    with pytest.raises(ReferenceLoadError, match=bogus.replace(".", r"\.")):
        load_reference_model(ckpt)


def test_missing_scale_fails_loudly(tmp_path):
    ckpt = tmp_path / "ckpt"
    _quantize_export(ARCHS[0], "NVFP4_DEFAULT_CFG", "cpu", ckpt, seed=5)
    key = next(k for k in load_checkpoint_tensors(ckpt) if k.endswith("experts.1.down_proj.weight_scale_2"))
    _corrupt(ckpt, lambda t: t.pop(key))
    with pytest.raises(ReferenceLoadError, match=key.replace(".", r"\.")):
        load_reference_model(ckpt)


@pytest.mark.skipif(not TRANSFORMERS_5, reason="fused 3-D experts exist only in transformers >= 5")
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_experts_forward_reproduces_hf(arch):
    """With unquantized weights the replacement computes exactly what the HF eager experts forward does.

    (transformers 5.14 defaults to ``grouped_mm``, a different summation order; ModelOpt's fused-expert
    quantization intercepts the eager forward, so that is the one the reference reproduces.)
    """
    from modelopt_fork.reference.runtime import _QuantWeight

    model = build(arch, seed=7)
    model.config._experts_implementation = "eager"
    name, hf = next((n, m) for n, m in model.named_modules()
                    if any(p.dim() == 3 for p in m.parameters(recurse=False)))
    e_count, two_i, _ = hf.gate_up_proj.shape
    half = two_i // 2

    def piece(w):
        return _QuantWeight("x", w.detach().clone(), None, None, None)

    first = [[piece(hf.gate_up_proj[e, :half]), piece(hf.gate_up_proj[e, half:])] for e in range(e_count)]
    down = [[piece(hf.down_proj[e])] for e in range(e_count)]
    ref = ReferenceFusedExperts(name, e_count, hf.act_fn, True, first, down)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(24, hf.gate_up_proj.shape[2], generator=g)
    top_k_index = torch.stack([torch.randperm(e_count, generator=g)[:2] for _ in range(24)])
    top_k_index[0] = torch.tensor([e_count - 1, 0])  # every expert hit at least once below
    top_k_index[1] = torch.tensor([1, e_count - 2])
    top_k_weights = torch.rand(24, 2, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ref(x, top_k_index, top_k_weights), hf(x, top_k_index, top_k_weights),
                                   rtol=0, atol=0)
