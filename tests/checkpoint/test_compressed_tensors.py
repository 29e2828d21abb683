"""An independent reading of our checkpoints: compressed-tensors' ModelOptNvfp4Converter and NVFP4 helpers.

Nobody here wrote compressed-tensors. Every exported twin (archs x NVFP4 default / AWQ-lite) is
converted with its converter; its unpacking must equal ours bit for bit, its dequantized weights
must equal ours up to the one place the two formats differ (it stores the reciprocal global scale,
see ``test_dequantized_weights_match_ours``), and where transformers' compressed-tensors
integration can load the result, the loaded weights and logits are compared too. Where it cannot,
the exact behaviour is asserted (docs/compressed-tensors-crosscheck.md), so a change is noticed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _utils.tiny_moe import ARCHS, TRANSFORMERS_5
from modelopt_fork.reference.nvfp4 import dequantize_weight, unpack_e2m1

from .conftest import AWQ_KEPT, CONFIGS

pytest.importorskip("compressed_tensors", reason="compressed-tensors 0.20 (fork-test extra, python >= 3.11)")

from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8  # noqa: E402
from compressed_tensors.entrypoints.convert import ModelOptNvfp4Converter, convert_checkpoint  # noqa: E402
from compressed_tensors.quantization import QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize  # noqa: E402
from compressed_tensors.quantization.quant_scheme import NVFP4  # noqa: E402

CASES = [pytest.param(a, c, id=f"{a}-{c}") for a in ARCHS for c in CONFIGS]
# float32 relative bound between compressed-tensors' dequantization and ours (see
# test_dequantized_weights_match_ours): 5 roundings of at most 2^-24 each.
F32_REL_BOUND = 5 * 2.0**-24
# bf16 weights after transformers loads the converted checkpoint: CT rounds to bf16 up to three
# times (global scale, scale quotient, product), ours once from float32: at most 2 bf16 ulps apart.
BF16_ULPS = 2
# Logits of the CT-loaded bf16 model vs the fork's float32 fake-quantized model. Both quantize
# activations to NVFP4, so bf16-vs-float32 differences flip E2M1 codes and the two agree only
# about as well as NVFP4 agrees with the unquantized model (measured cosine 0.988 Qwen3-MoE,
# 0.992 Mixtral; the unquantized model is at 0.985 / 0.991). The bound catches misreads: the
# same checkpoint with swapped nibbles gives cosine ~0.47.
LOGITS_COS = 0.98
SWAPPED_COS_MAX = 0.9


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _quantized(tensors) -> list[str]:
    return sorted(k[: -len(".weight")] for k, v in tensors.items() if k.endswith(".weight") and v.dtype == torch.uint8)


def _convert(src: Path, dst: Path) -> Path:
    targets = _quantized(_tensors(src))
    convert_checkpoint(src, dst, ModelOptNvfp4Converter(targets=targets), device="cpu", max_workers=1)
    return dst


@pytest.fixture(scope="session")
def converted(exported, tmp_path_factory):
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, cfg: str) -> Path:
        if (arch, cfg) not in cache:
            cache[arch, cfg] = _convert(exported(arch, cfg).path, tmp_path_factory.mktemp(f"ct-{arch}-{cfg}") / "ct")
        return cache[arch, cfg]

    return get


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()])


# -- the converter and the helpers ---------------------------------------------------------------------

def test_unpack_every_byte_matches_ours():
    """All 256 bytes: same nibble order (low nibble = even element), same code table, same signed zero."""
    packed = torch.arange(256, dtype=torch.uint8).view(16, 16)
    theirs = unpack_fp4_from_uint8(packed, 16, 32, dtype=torch.float32)
    assert torch.equal(_bits(theirs), _bits(unpack_e2m1(packed)))
    # byte 0x08: low nibble code 8 is -0.0 (element 16), high nibble code 0 is +0.0 (element 17)
    assert bool(torch.signbit(theirs[0, 16])) and not bool(torch.signbit(theirs[0, 17]))
    assert theirs[15, 31].item() == -6.0 and theirs[7, 15].item() == 6.0  # byte 0xff, byte 0x77


@pytest.mark.parametrize(("arch", "cfg"), CASES)
def test_converter_keeps_our_bytes(arch, cfg, exported, converted):
    ours, theirs = _tensors(exported(arch, cfg).path), _tensors(converted(arch, cfg))
    quantized = _quantized(ours)
    assert quantized
    for m in quantized:
        assert torch.equal(theirs[f"{m}.weight_packed"], ours[f"{m}.weight"]), m
        assert torch.equal(_bits(theirs[f"{m}.weight_scale"]), _bits(ours[f"{m}.weight_scale"])), m
        # the converter stores reciprocals (1/x in float32), as vLLM's compressed-tensors scheme reads them
        assert torch.equal(theirs[f"{m}.weight_global_scale"], 1 / ours[f"{m}.weight_scale_2"]), m
        assert torch.equal(theirs[f"{m}.input_global_scale"], 1 / ours[f"{m}.input_scale"]), m
        for gone in ("weight", "weight_scale_2", "input_scale"):
            assert f"{m}.{gone}" not in theirs, m
    converted_names = {f"{m}.{p}" for m in quantized for p in ("weight", "weight_scale_2", "input_scale")}
    untouched = {k: v for k, v in ours.items() if k not in converted_names and not k.endswith(".weight_scale")}
    for k, v in untouched.items():  # unquantized weights, norms, routers, pre_quant_scale
        assert torch.equal(_bits(theirs[k]), _bits(v)), k


@pytest.mark.parametrize(("arch", "cfg"), CASES)
def test_dequantized_weights_match_ours(arch, cfg, exported, converted):
    """Bit for bit where the formats agree, within a derived bound where they cannot.

    Exact: CT's unpacking == ours, and CT's dequantization == our E2M1 values times its block
    scale divided by its global scale (so it groups and scales elements exactly as we do).
    Bounded: ours is ``E2M1 * (f32(scale) * weight_scale_2)``, CT's ``E2M1 * (f32(scale) /
    fl(1 / weight_scale_2))``; the float32 reciprocal is inexact for most scales, so with five
    roundings of at most 2^-24 between them the results differ by at most 5 * 2^-24 relative
    (measured: up to 2 ulps, in 20-40% of elements).
    """
    ours_t, theirs_t = _tensors(exported(arch, cfg).path), _tensors(converted(arch, cfg))
    scheme = QuantizationScheme(targets=["Linear"], **NVFP4)
    differing = total = 0
    for m in _quantized(ours_t):
        packed = theirs_t[f"{m}.weight_packed"]
        rows, half = packed.shape
        q = unpack_fp4_from_uint8(packed, rows, 2 * half, dtype=torch.float32)
        assert torch.equal(_bits(q), _bits(unpack_e2m1(ours_t[f"{m}.weight"]))), m
        scale, g = theirs_t[f"{m}.weight_scale"].float(), theirs_t[f"{m}.weight_global_scale"]
        theirs = dequantize(x_q=q, scale=scale, args=scheme.weights, global_scale=g, dtype=torch.float32)
        ours_in_ct_convention = (unpack_e2m1(ours_t[f"{m}.weight"]).view(rows, -1, 16)
                                 * (scale / g).unsqueeze(-1)).view(rows, -1)
        assert torch.equal(_bits(theirs), _bits(ours_in_ct_convention)), m
        ours = dequantize_weight(ours_t[f"{m}.weight"], ours_t[f"{m}.weight_scale"], ours_t[f"{m}.weight_scale_2"])
        err = (theirs - ours).abs()
        assert bool((err <= F32_REL_BOUND * ours.abs()).all()), (m, (err / ours.abs().clamp_min(1e-30)).max())
        assert torch.equal(torch.signbit(theirs), torch.signbit(ours)), m
        differing += int((_bits(theirs) != _bits(ours)).sum())
        total += ours.numel()
    assert 0 < differing < total  # the reciprocal really is inexact here; if it became exact, tighten the test


# -- transformers' compressed-tensors integration ------------------------------------------------------------

def _load(path: Path, dtype=torch.bfloat16, **kw):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **kw)


def _reshape_global_scales(src: Path, dst: Path) -> Path:
    """The one adaptation: 0-d global scales as [1], the shape compressed-tensors' own compressor writes."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        t = load_file(f)
        save_file({k: v.reshape(1) if k.endswith("global_scale") and v.dim() == 0 else v for k, v in t.items()},
                  f, metadata={"format": "pt"})
    return dst


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers 5.14 loads 0-d global scales (see the fused-experts test)")
@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_457_rejects_0d_global_scales(arch, converted):
    with pytest.raises(RuntimeError, match=r"size mismatch for input_global_scale: copying a param with shape "
                                           r"torch.Size\(\[\]\) from checkpoint, the shape in current model is "
                                           r"torch.Size\(\[1\]\)"):
        _load(converted(arch, "NVFP4_DEFAULT_CFG"))


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_float32_model_cannot_run(arch, converted, exported, tmp_path):
    """CT decompresses NVFP4 weights to bf16 whatever the model dtype: a float32 twin fails its first matmul."""
    model, _ = _load(_reshape_global_scales(converted(arch, "NVFP4_DEFAULT_CFG"), tmp_path / "ct"), torch.float32)
    with pytest.raises(RuntimeError, match="expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16"
                       ):
        model(exported(arch, "NVFP4_DEFAULT_CFG").ids)


def _check_loaded_weights(model, ours_t: dict, skip: set[str]):
    mods = dict(model.named_modules())
    checked = 0
    for m in _quantized(ours_t):
        if m in skip:
            continue
        w = mods[m].weight.detach()
        ours = dequantize_weight(ours_t[f"{m}.weight"], ours_t[f"{m}.weight_scale"], ours_t[f"{m}.weight_scale_2"])
        ulps = (_bits(w).int() - _bits(ours.to(torch.bfloat16)).int()).abs().max().item()
        assert w.dtype == torch.bfloat16 and ulps <= BF16_ULPS, (m, ulps)
        checked += 1
    return checked


@pytest.mark.skipif(TRANSFORMERS_5, reason="per-expert nn.Linear experts only under transformers 4.57")
@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_457_loads_weights_and_logits_agree(arch, exported, converted, tmp_path):
    ex = exported(arch, "NVFP4_DEFAULT_CFG")
    ckpt = _reshape_global_scales(converted(arch, "NVFP4_DEFAULT_CFG"), tmp_path / "ct")
    model, info = _load(ckpt)
    assert not any(info.values()), info
    with torch.no_grad():
        logits = model(ex.ids).logits.float()  # the first forward decompresses the weights
    assert _check_loaded_weights(model, _tensors(ex.path), skip=set()) == len(_quantized(_tensors(ex.path)))
    assert torch.isfinite(logits).all()
    cos = _cos(logits, ex.fake_logits)
    assert cos >= LOGITS_COS, cos
    # negative control: the same checkpoint with the nibbles of every byte swapped
    for f in ckpt.glob("*.safetensors"):
        t = load_file(f)
        save_file({k: ((v & 0x0F) << 4) | (v >> 4) if k.endswith("weight_packed") else v for k, v in t.items()},
                  f, metadata={"format": "pt"})
    swapped, _ = _load(ckpt)
    with torch.no_grad():
        assert _cos(swapped(ex.ids).logits, ex.fake_logits) < SWAPPED_COS_MAX


@pytest.mark.skipif(TRANSFORMERS_5, reason="transformers 5.14 AWQ exports are MIXED_PRECISION with unsmoothed experts")
@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_457_drops_pre_quant_scale(arch, exported, converted, tmp_path):
    """CT's NVFP4 format has no AWQ smoothing: the converter passes pre_quant_scale through and
    transformers leaves every one of them unused (the smoothed weights then run unsmoothed). The
    form that keeps them (TensorRT-LLM's NVFP4_AWQ); the fork's default AWQ export has none."""
    ex = exported(arch, AWQ_KEPT)
    pqs = {k for k in _tensors(ex.path) if k.endswith(".pre_quant_scale")}
    assert pqs
    _, info = _load(_reshape_global_scales(converted(arch, AWQ_KEPT), tmp_path / "ct"))
    assert set(info["unexpected_keys"]) == pqs
    assert not info["missing_keys"] and not info["mismatched_keys"]


# What transformers 5.14 makes of the converted fused experts, per architecture (recorded, see
# docs/compressed-tensors-crosscheck.md): "no-global": the fused parameters get E2M1 * block scale
# (global scale dropped); "missing": they are not loaded at all (left randomly initialised) and the
# packed weights come back unexpected under names missing a dot ("...gate_projweight").
FUSED_EXPERTS_5 = {"qwen3_moe": "no-global", "mixtral": "no-global", "gemma4": "missing"}
# Mixtral's router (MixtralTopKRouter, not an nn.Linear) stays float32 under a bf16 load: the first
# forward fails there, before the dense modules are decompressed.
FORWARD_FAILS_5 = {"mixtral": "expected m1 and m2 to have the same dtype, but got: c10::BFloat16 != float"}


def _expert_key(name: str) -> str:
    """Layer index and the path below ``experts.`` (transformers 5 renames Mixtral's block_sparse_moe)."""
    m = re.match(r"^.*?layers\.(\d+)\..*?experts\.(.*)$", name)
    assert m, name
    return f"{m[1]}:{m[2]}"


@pytest.mark.skipif(not TRANSFORMERS_5, reason="fused 3-D experts exist only in transformers >= 5")
@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_5_fused_experts_are_not_loaded_right(arch, exported, converted):
    """CT cannot attach its scheme to fused 3-D experts (it warns "Could not match ...experts.0.gate_proj");
    every expert's global scales are reported unexpected, and the fused expert parameters end up wrong."""
    ex = exported(arch, "NVFP4_DEFAULT_CFG")
    ours_t = _tensors(ex.path)
    experts = [m for m in _quantized(ours_t) if ".experts." in m]
    model, info = _load(converted(arch, "NVFP4_DEFAULT_CFG"))
    expected = {_expert_key(f"{m}.{p}") for m in experts for p in ("weight_global_scale", "input_global_scale")}
    containers = sorted({m.split(".experts.")[0] + ".experts" for m in experts})
    if FUSED_EXPERTS_5[arch] == "missing":
        expected |= {_expert_key(m) + "weight" for m in experts}
        assert set(info["missing_keys"]) == {f"{c}.{p}" for c in containers for p in ("gate_up_proj", "down_proj")}
    else:
        assert not info["missing_keys"]
    assert {_expert_key(k) for k in info["unexpected_keys"]} == expected
    assert len(info["unexpected_keys"]) == len(expected) and not info["mismatched_keys"]
    if arch in FORWARD_FAILS_5:
        with pytest.raises(RuntimeError, match=re.escape(FORWARD_FAILS_5[arch])), torch.no_grad():
            model(ex.ids)
    else:
        with torch.no_grad():
            model(ex.ids)
        # the dense modules still load right
        assert _check_loaded_weights(model, ours_t, skip=set(experts)) > 0
    if FUSED_EXPERTS_5[arch] == "no-global":
        # expert 0's gate projection, as the fused parameter holds it: 1/weight_scale_2 too large
        gate = next(m for m in experts if _expert_key(m).split(":")[1].startswith("0.") and m.endswith(
            ("gate_proj", "w1")))
        fused = next(mod for name, mod in model.named_modules() if name.endswith(".experts")
                     and name.split(".layers.")[1].split(".")[0] == _expert_key(gate).split(":")[0]).gate_up_proj[0]
        rows = ours_t[f"{gate}.weight"].shape[0]
        no_global = (unpack_e2m1(ours_t[f"{gate}.weight"]).view(rows, -1, 16)
                     * ours_t[f"{gate}.weight_scale"].float().unsqueeze(-1)).view(rows, -1)
        assert torch.equal(fused[:rows].detach().float(), no_global.to(torch.bfloat16).float())
