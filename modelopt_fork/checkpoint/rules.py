"""The consumer contract of an exported NVFP4 checkpoint: one list, one rule per failure mode.

Each rule has an id, one sentence of why (the runtime, the failure it prevents) and the
runtime source it was read from (vLLM, TensorRT-LLM; files named so they can be re-checked
when those move) and the runtimes it is about (``RUNTIMES``; most rules hold for both, the
AWQ ``pre_quant_scale`` rules describe TensorRT-LLM's NVFP4_AWQ form, which vLLM refuses
altogether). ``check(layout)`` yields ``(tensor, found, expected)`` for each violation;
``tensor`` is a tensor name, or ``file.json:key.path`` for configuration.
``docs/checkpoint-rules.md`` is generated from this list (``python -m modelopt_fork.checkpoint.docs --write``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from .layout import GATE_UP_GROUPS as GATE_UP
from .layout import NVFP4_ALGOS, SCALARS, Layout, Module
from .load import INDEX

Finding = tuple[str, str, str]

VLLM_MODELOPT = "vllm: vllm/model_executor/layers/quantization/modelopt.py"
VLLM_PARAMETER = "vllm: vllm/model_executor/parameter.py (PerTensorScaleParameter, BasevLLMParameter)"
VLLM_MOE_LOADER = "vllm: vllm/model_executor/layers/fused_moe/layer.py (weight_loader, _load_per_tensor_weight_scale)"
VLLM_MOE_ORACLE = "vllm: vllm/model_executor/layers/fused_moe/oracle/nvfp4.py (convert_to_nvfp4_moe_kernel_format)"
VLLM_QUANT_CONFIG = "vllm: vllm/model_executor/model_loader/weight_utils.py (get_quant_config)"
VLLM_INDEX = ("vllm: vllm/model_executor/model_loader/weight_utils.py (filter_duplicate_safetensors_files, "
              "safetensors_weights_iterator)")
VLLM_ROUTERS = "vllm: vllm/model_executor/models/qwen2_moe.py, arctic.py (router ReplicatedLinear, quant_config)"
VLLM_NVFP4_CONFIG = ("vllm: vllm/model_executor/layers/quantization/modelopt.py (0.25.1 line 1049, "
                     "ModelOptNvFp4Config: 'Unsupported ModelOpt NVFP4 quant_algo'; "
                     "ModelOptMixedPrecisionConfig.get_quant_method: any other per-layer algo gets "
                     "UnquantizedLinearMethod)")
VLLM_ARCH_CONVERTOR = ("vllm: vllm/transformers_utils/model_arch_config_convertor.py (0.25.1 line 231, "
                       "'Unknown ModelOpt quant algo')")
VLLM_LOAD_WEIGHTS = ("vllm: vllm/model_executor/models/utils.py (0.25.1 line 392, AutoWeightsLoader: 'There is no "
                     "module or parameter named'), vllm/model_executor/layers/fused_moe/routed_experts.py "
                     "(line 887, expert weight_loader)")
VLLM_GLOBAL_SCALE = ("vllm: vllm/model_executor/layers/quantization/modelopt.py (0.25.1 line 1229, "
                     "input_global_scale_inv = 1 / input_scale), fused_moe/oracle/nvfp4.py (lines 445-446, "
                     "a13_scale = 1 / a13_scale.max())")
VLLM_MOE_EMULATION = ("vllm: vllm/model_executor/layers/fused_moe/oracle/nvfp4.py (0.25.1 lines 419-446: one "
                      "activation scale per MoE layer, the max over experts), fused_moe/experts/nvfp4_emulation_moe.py "
                      "(hidden states quantized once before routing)")
TRT_LINEAR = "TensorRT-LLM: tensorrt_llm/_torch/modules/linear.py (NVFP4LinearMethod)"
TRT_MOE = "TensorRT-LLM: tensorrt_llm/_torch/modules/fused_moe/quantization.py (NVFP4FusedMoEMethod)"
TRT_CONFIG = "TensorRT-LLM: tensorrt_llm/_torch/model_config.py (load_modelopt_quant_config)"
CT_CONVERTER = ("compressed-tensors: compressed_tensors/entrypoints/convert/converters/modelopt_nvfp4.py "
                "(ModelOptNvfp4Converter.validate)")

GROUP_SIZE = 16
# TensorRT-LLM's tolerance when it checks that experts share a pre_quant_scale.
PQS_RTOL, PQS_ATOL = 1e-5, 1e-8


RUNTIMES = ("vllm", "tensorrt-llm")


@dataclass(frozen=True)
class Rule:
    id: str
    why: str
    sources: tuple[str, ...]
    check: Callable[[Layout], Iterable[Finding]]
    runtimes: tuple[str, ...] = RUNTIMES


RULES: list[Rule] = []


def rule(rule_id: str, why: str, *sources: str, runtimes: tuple[str, ...] = RUNTIMES):
    def register(fn: Callable[[Layout], Iterable[Finding]]):
        if any(r.id == rule_id for r in RULES):
            raise ValueError(f"duplicate rule id {rule_id}")
        if not runtimes or set(runtimes) - set(RUNTIMES):
            raise ValueError(f"rule {rule_id}: runtimes must be a subset of {RUNTIMES}, got {runtimes}")
        RULES.append(Rule(rule_id, why, sources, fn, tuple(runtimes)))
        return fn

    return register


def rules_for(runtimes=RUNTIMES) -> list[Rule]:
    """The rules that concern at least one of ``runtimes``."""
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtime(s) {sorted(unknown)}; known: {', '.join(RUNTIMES)}")
    return [r for r in RULES if set(r.runtimes) & set(runtimes)]


# -- helpers ------------------------------------------------------------------------------------

def _dt(d) -> str:
    return str(d).removeprefix("torch.")


def _shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _qkey(L: Layout, key: str) -> str:
    hf = L.ckpt.hf_quant_config is not None
    src = "hf_quant_config.json:quantization" if hf else "config.json:quantization_config"
    return f"{src}.{key}"


def _values(t: torch.Tensor, limit: int = 4) -> str:
    flat = t.detach().float().flatten()
    vals = ", ".join(f"{v:.6g}" for v in flat[:limit].tolist())
    return vals if flat.numel() <= limit else f"{vals}, ... ({flat.numel()} values)"


def _weight_name(m: Module) -> str:
    return m.params.get("weight") or next(iter(m.params.values()))


def _scalar(L: Layout, tensor: str) -> torch.Tensor | None:
    """A per-tensor scalar's value as 0-d float32, or None if it is not one (another rule says so).
    Read once and kept (four bytes each, like its header entry); arrays are read per use and dropped."""
    if tensor not in L.scalars:
        info = L.info(tensor)
        ok = isinstance(info.dtype, torch.dtype) and info.dtype.is_floating_point and len(info.shape) <= 1
        L.scalars[tensor] = L.ckpt.load(tensor).float().reshape(()) if ok and _numel(info.shape) == 1 else None
    return L.scalars[tensor]


def _quantized_with_weight(L: Layout) -> Iterator[Module]:
    return (m for m in L.quantized if "weight" in m.params)


def _e4m3_suspect(L: Layout, tensor: str) -> torch.Tensor | None:
    """An E4M3 tensor's bytes if any has the sign bit or is NaN (byte 0x7f or above), else None:
    valid block scales are all below 0x7f (448), which one max over the bytes settles."""
    if L.info(tensor).dtype != torch.float8_e4m3fn:
        return None
    b = L.ckpt.load(tensor).contiguous().view(torch.uint8)
    return b if b.numel() and int(b.numpy().max()) >= 0x7F else None


# -- configuration --------------------------------------------------------------------------------

@rule("quant-config-present",
      "ModelOpt writes both; TensorRT-LLM reads the `quantization` object of hf_quant_config.json and vLLM "
      "reads config.json's `quantization_config` first, so without either one runtime does not see the "
      "checkpoint as NVFP4 and fails loading the packed uint8 weights into unquantized layers.",
      TRT_CONFIG, VLLM_QUANT_CONFIG)
def _quant_config_present(L: Layout) -> Iterator[Finding]:
    hf, cfg = L.ckpt.hf_quant_config, L.ckpt.config
    if hf is None:
        yield "hf_quant_config.json", "no such file", "a file with a 'quantization' object"
    elif not isinstance(hf.get("quantization"), dict):
        yield "hf_quant_config.json:quantization", repr(hf.get("quantization")), "an object"
    if cfg is None:
        yield "config.json", "no such file", "a file with a 'quantization_config' object"
    elif not isinstance(cfg.get("quantization_config"), dict):
        yield "config.json:quantization_config", repr(cfg.get("quantization_config")), "an object"


def _algos_outside(L: Layout, top: tuple[str, ...], per_layer: tuple[str, ...]) -> Iterator[Finding]:
    """The checkpoint's quant_algo outside ``top``, and its MIXED_PRECISION layers' outside ``per_layer``."""
    algo = L.quant.get("quant_algo")
    if algo is None:
        return
    if str(algo).upper() not in top:
        yield _qkey(L, "quant_algo"), repr(algo), f"one of {', '.join(top)}"
    if L.mixed:
        for key, entry in L.quantized_layers.items():
            a = entry.get("quant_algo")
            if a is not None and str(a).upper() not in per_layer:
                yield _qkey(L, f"quantized_layers.{key}.quant_algo"), repr(a), f"one of {', '.join(per_layer)}"


@rule("quant-algo-supported",
      "vLLM rejects a quant_algo outside its list (ModelOptQuantConfigBase.from_config, ModelOptNvFp4Config) and "
      "TensorRT-LLM maps it onto its QuantAlgo enum; for this NVFP4 contract the algorithm must be NVFP4, "
      "NVFP4_AWQ (TensorRT-LLM only: vLLM does not list it), W4A16_NVFP4, or MIXED_PRECISION whose layers "
      "use one of those.",
      VLLM_MODELOPT, TRT_CONFIG)
def _quant_algo_supported(L: Layout) -> Iterator[Finding]:
    yield from _algos_outside(L, (*NVFP4_ALGOS, "MIXED_PRECISION"), NVFP4_ALGOS)


@rule("quant-algo-vllm",
      "vLLM 0.25.1 has no NVFP4_AWQ: ModelOptNvFp4Config raises for any NVFP4 quant_algo but NVFP4 and "
      "W4A16_NVFP4, its model-config convertor raises 'Unknown ModelOpt quant algo', and under MIXED_PRECISION "
      "a layer declared with another algorithm gets an UnquantizedLinearMethod that cannot load its packed "
      "weight ('QKVParallelLinear' object has no attribute 'data', measured). AWQ checkpoints for vLLM carry "
      "their scales folded into the weights and say NVFP4.",
      VLLM_NVFP4_CONFIG, VLLM_ARCH_CONVERTOR, runtimes=("vllm",))
def _quant_algo_vllm(L: Layout) -> Iterator[Finding]:
    allowed = ("NVFP4", "W4A16_NVFP4")
    yield from _algos_outside(L, (*allowed, "MIXED_PRECISION"), allowed)


@rule("quant-config-keys",
      "vLLM raises ValueError when hf_quant_config.json lacks group_size, kv_cache_quant_algo or exclude_modules "
      "for NVFP4 (ModelOptNvFp4Config._from_config), or when MIXED_PRECISION has no non-empty quantized_layers "
      "whose entries name their quant_algo (ModelOptMixedPrecisionConfig); TensorRT-LLM reads the same keys.",
      VLLM_MODELOPT, TRT_CONFIG)
def _quant_config_keys(L: Layout) -> Iterator[Finding]:
    hf = L.ckpt.hf_quant_config
    q = hf.get("quantization") if hf else None
    if not isinstance(q, dict):
        return  # quant-config-present
    base = "hf_quant_config.json:quantization"
    required = ["quant_algo", "kv_cache_quant_algo"]
    required += ["quantized_layers"] if str(q.get("quant_algo", "")).upper() == "MIXED_PRECISION" else [
        "group_size", "exclude_modules"]
    for key in required:
        if key not in q:
            yield f"{base}.{key}", "missing", "present"
    if "exclude_modules" in q and not isinstance(q["exclude_modules"], list):
        yield f"{base}.exclude_modules", type(q["exclude_modules"]).__name__, "a list of module names / wildcards"
    if "quantized_layers" in q:
        ql = q["quantized_layers"]
        if not isinstance(ql, dict) or not ql:
            yield f"{base}.quantized_layers", repr(ql)[:60], "a non-empty object"
        else:
            for key, entry in ql.items():
                if not isinstance(entry, dict) or "quant_algo" not in entry:
                    yield f"{base}.quantized_layers.{key}.quant_algo", "missing", "present"


@rule("group-size",
      "The NVFP4 block is 16 elements: vLLM sizes weight_scale as [out, in/group_size] from this value and "
      "TensorRT-LLM fixes scaling_vector_size = 16, so any other value fails loading or misreads the scales.",
      VLLM_MODELOPT, TRT_LINEAR)
def _group_size(L: Layout) -> Iterator[Finding]:
    if "group_size" in L.quant and L.quant["group_size"] != GROUP_SIZE:
        yield _qkey(L, "group_size"), repr(L.quant["group_size"]), str(GROUP_SIZE)
    for key, entry in L.quantized_layers.items():
        if "group_size" in entry and entry["group_size"] != GROUP_SIZE:
            yield _qkey(L, f"quantized_layers.{key}.group_size"), repr(entry["group_size"]), str(GROUP_SIZE)


@rule("config-json-consistent",
      "vLLM reads config.json's quantization_config before hf_quant_config.json (get_quant_config) while "
      "TensorRT-LLM reads hf_quant_config.json, so the two must say the same (quant_method modelopt, "
      "quant_algo, ignore = exclude_modules, quantized_layers, KV-cache scheme) or the runtimes serve "
      "different models.",
      VLLM_QUANT_CONFIG, VLLM_MODELOPT, TRT_CONFIG)
def _config_json_consistent(L: Layout) -> Iterator[Finding]:
    hf, cfg = L.ckpt.hf_quant_config, L.ckpt.config
    q = hf.get("quantization") if hf else None
    qc = cfg.get("quantization_config") if cfg else None
    if not isinstance(q, dict) or not isinstance(qc, dict):
        return  # quant-config-present
    base = "config.json:quantization_config"
    if qc.get("quant_method") != "modelopt":
        yield f"{base}.quant_method", repr(qc.get("quant_method")), "'modelopt'"
    if str(qc.get("quant_algo", "")).upper() != str(q.get("quant_algo", "")).upper():
        yield f"{base}.quant_algo", repr(qc.get("quant_algo")), f"{q.get('quant_algo')!r} (hf_quant_config.json)"
    if isinstance(q.get("exclude_modules"), list):
        ignore = qc.get("ignore", [])
        ignore = ignore if isinstance(ignore, list) else []
        if sorted(map(str, ignore)) != sorted(map(str, q["exclude_modules"])):
            extra = sorted(set(map(str, ignore)) - set(map(str, q["exclude_modules"])))
            missing = sorted(set(map(str, q["exclude_modules"])) - set(map(str, ignore)))
            yield f"{base}.ignore", f"extra {extra}, missing {missing}", "the same names as exclude_modules"
    if isinstance(q.get("quantized_layers"), dict) and qc.get("quantized_layers") != q["quantized_layers"]:
        other = qc.get("quantized_layers") if isinstance(qc.get("quantized_layers"), dict) else {}
        ours = q["quantized_layers"]
        diff = sorted(k for k in set(other) | set(ours) if other.get(k) != ours.get(k))
        yield f"{base}.quantized_layers", f"differs at {diff[:4]}", "the quantized_layers of hf_quant_config.json"
    kv = q.get("kv_cache_quant_algo")
    scheme = qc.get("kv_cache_scheme")
    if kv is None and scheme is not None:
        yield f"{base}.kv_cache_scheme", repr(scheme)[:60], "absent (kv_cache_quant_algo is null)"
    elif str(kv).upper() == "FP8" and not (isinstance(scheme, dict) and scheme.get("type") == "float"
                                           and scheme.get("num_bits") == 8):
        yield f"{base}.kv_cache_scheme", repr(scheme)[:60], "{type: float, num_bits: 8} (kv_cache_quant_algo FP8)"


@rule("index-matches-shards",
      "vLLM picks the shards from the index's weight_map (filter_duplicate_safetensors_files) and then reads "
      "every tensor they hold, while transformers' loader looks each name up in the map: a name the map places "
      "in a shard that does not hold it is never loaded (its parameter stays uninitialised), and a shard tensor "
      "the map leaves out is loaded by one and not the other.",
      VLLM_INDEX)
def _index_matches_shards(L: Layout) -> Iterator[Finding]:
    weight_map = L.ckpt.weight_map
    if weight_map is None:
        return
    for name, file in sorted(weight_map.items()):
        info = L.ckpt.tensors.get(name)
        if info is None:
            yield f"{INDEX}:weight_map.{name}", f"{file!r}, which holds no such tensor", "a tensor of that shard"
        elif info.file != file:
            yield name, f"in {info.file}", f"in {file} (the index's weight_map)"
    for name in sorted(set(L.ckpt.tensors) - set(weight_map)):
        yield name, "not in the index's weight_map", "listed with its shard"


# -- which modules are quantized ------------------------------------------------------------------

@rule("quantized-modules-present",
      "vLLM and TensorRT-LLM give every linear the configuration does not exclude an NVFP4 method (packed uint8 "
      "[out, in/2] weight and its scales); a checkpoint labelled NVFP4 without a single quantized module (an "
      "empty shard, only lm_head, every weight left unquantized) cannot fill them and is no NVFP4 export.",
      VLLM_MODELOPT, TRT_LINEAR)
def _quantized_modules_present(L: Layout) -> Iterator[Finding]:
    if not L.quantized:
        yield (_qkey(L, "quant_algo"), f"{L.algo or 'no quant_algo'}, but none of the {len(L.ckpt.tensors)} "
               "tensor(s) belongs to a quantized module", "at least one quantized module (uint8 weight and scales)")



@rule("excluded-module-quantized",
      "vLLM gives a module matched by exclude_modules an UnquantizedLinearMethod (is_layer_excluded), whose "
      "[out, in] parameter cannot take a packed uint8 [out, in/2] weight and has no slot for its scales.",
      VLLM_MODELOPT)
def _excluded_module_quantized(L: Layout) -> Iterator[Finding]:
    if L.mixed:
        return
    routers = {r.name for r in L.routers}
    for m in L.quantized:
        if m.name not in routers and L.is_excluded(m.name):
            pattern = L.exclude_match(m.name)
            yield _weight_name(m), f"quantized, but exclude_modules has {pattern!r}", "unquantized, or not excluded"


@rule("quantized-module-undeclared",
      "Under MIXED_PRECISION vLLM quantizes only the modules quantized_layers names (_resolve_quant_algo); any "
      "other gets an UnquantizedLinearMethod that cannot load its packed weight and scales.",
      VLLM_MODELOPT)
def _quantized_module_undeclared(L: Layout) -> Iterator[Finding]:
    if not L.mixed:
        return
    routers = {r.name for r in L.routers}
    for m in L.quantized:
        if m.name not in routers and L.declared_entry(m.name) is None:
            yield _weight_name(m), "quantized, but no quantized_layers entry covers it", "an entry for it or its parent"


@rule("declared-layer-unquantized",
      "vLLM builds an NVFP4 method for every quantized_layers entry (MIXED_PRECISION), whose uint8 "
      "[out, in/2] parameter cannot take an unquantized weight.",
      VLLM_MODELOPT)
def _declared_layer_unquantized(L: Layout) -> Iterator[Finding]:
    if not L.mixed:
        return
    covered = {".".join(parts[:i]) for m in L.quantized for parts in [m.name.split(".")]
               for i in range(1, len(parts) + 1)}  # the quantized modules and their ancestors
    for key in L.quantized_layers:
        if key not in covered:
            yield (_qkey(L, f"quantized_layers.{key}"), "no quantized tensors under it",
                   "entries only for quantized modules")


@rule("router-excluded",
      "MoE routers run unquantized: vLLM builds them as ReplicatedLinear without a quant config in most MoE "
      "models (a packed router weight fails to load) and relies on exclude_modules where the model passes one "
      "(is_layer_excluded); so a router must be unquantized and excluded (MIXED_PRECISION: left out of "
      "quantized_layers).",
      VLLM_ROUTERS, VLLM_MODELOPT)
def _router_excluded(L: Layout) -> Iterator[Finding]:
    for r in L.routers:
        problems = []
        if L.is_quantized(r):
            problems.append("quantized")
        if L.mixed:
            if (key := L.declared_entry(r.name)) is not None:
                problems.append(f"declared in quantized_layers as {key!r}")
        elif not L.is_excluded(r.name):
            problems.append("not matched by exclude_modules")
        if problems:
            yield _weight_name(r), "router " + " and ".join(problems), (
                "unquantized and left out of quantized_layers" if L.mixed else "unquantized and in exclude_modules")


# -- packed weights and block scales ---------------------------------------------------------------

@rule("weight-dtype",
      "vLLM and TensorRT-LLM allocate a quantized module's weight as packed uint8 [out, in/2] (two E2M1 codes "
      "a byte); any other dtype either fails the shape check or is cast into garbage codes.",
      VLLM_MODELOPT, TRT_LINEAR)
def _weight_dtype(L: Layout) -> Iterator[Finding]:
    for m in _quantized_with_weight(L):
        info = L.info(m.params["weight"])
        if info.dtype != torch.uint8:
            yield info.name, f"{_dt(info.dtype)} {_shape(info.shape)}", "uint8 [out, in/2]"


@rule("weight-packed-shape",
      "vLLM and TensorRT-LLM size the packed weight [out, in/2] from the model (in a multiple of 16, the block); "
      "a tensor of another shape fails their shape assertion, and experts of a layer are stacked into one "
      "[E, out, in/2] tensor so every expert must agree (dims taken from the other experts and fused siblings).",
      VLLM_MODELOPT, VLLM_MOE_LOADER, TRT_LINEAR)
def _weight_packed_shape(L: Layout) -> Iterator[Finding]:
    for m in _quantized_with_weight(L):
        info = L.info(m.params["weight"])
        if info.dtype != torch.uint8:
            continue  # weight-dtype
        if len(info.shape) != 2:
            yield info.name, _shape(info.shape), "2-D [out, in/2]"
            continue
        out, inn = info.shape[0], 2 * info.shape[1]
        ref = L.reference_dims(m)
        if inn % GROUP_SIZE:
            yield info.name, f"{_shape(info.shape)} (in = {inn})", f"in a multiple of {GROUP_SIZE}"
        elif ref and (out, inn) != ref:
            yield info.name, _shape(info.shape), f"[{ref[0]}, {ref[1] // 2}] (the shape its peers agree on)"


@rule("weight-scale-dtype",
      "TensorRT-LLM asserts weight_scale is float8_e4m3fn (NVFP4LinearMethod.load_weight_scales) and vLLM "
      "allocates it so; any other dtype is rejected or re-rounded.",
      TRT_LINEAR, VLLM_MODELOPT)
def _weight_scale_dtype(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        if (s := m.params.get("weight_scale")) and L.info(s).dtype != torch.float8_e4m3fn:
            yield s, _dt(L.info(s).dtype), "float8_e4m3fn"


@rule("weight-scale-shape",
      "One FP8 scale per 16 inputs: vLLM allocates weight_scale [out, in/16] and TensorRT-LLM swizzles it from "
      "that layout, so another shape fails loading or scales the wrong blocks.",
      VLLM_MODELOPT, TRT_LINEAR)
def _weight_scale_shape(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        s = m.params.get("weight_scale")
        ref = L.reference_dims(m)
        if s is None or ref is None or ref[1] % GROUP_SIZE:
            continue
        expected = (ref[0], ref[1] // GROUP_SIZE)
        if tuple(L.info(s).shape) != expected:
            yield s, _shape(L.info(s).shape), f"{_shape(expected)} ([out, in/16] for weight [{ref[0]}, {ref[1] // 2}])"


@rule("weight-scale-finite",
      "E4M3 has no infinity; bytes 0x7f/0xff are NaN, which every runtime multiplies into the whole 16-element "
      "block (NaN outputs, no load-time error).",
      VLLM_MODELOPT, TRT_LINEAR)
def _weight_scale_finite(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        if (s := m.params.get("weight_scale")) is None or (b := _e4m3_suspect(L, s)) is None:
            continue
        nan = (b & 0x7F) == 0x7F
        if bool(nan.any()):
            first = tuple(nan.nonzero()[0].tolist())
            yield s, f"{int(nan.sum())} NaN byte(s), first at {list(first)}", "finite E4M3 block scales"


@rule("weight-scale-sign",
      "Block scales are magnitudes (block amax / (6 * weight_scale_2)); a negative one flips the sign of its 16 "
      "weights in every runtime, which multiply it in without a check.",
      VLLM_MODELOPT, TRT_LINEAR)
def _weight_scale_sign(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        if (s := m.params.get("weight_scale")) is None or (b := _e4m3_suspect(L, s)) is None:
            continue
        neg = ((b & 0x80) != 0) & ((b & 0x7F) != 0) & ((b & 0x7F) != 0x7F)
        if bool(neg.any()):
            first = tuple(neg.nonzero()[0].tolist())
            yield s, f"{int(neg.sum())} negative block scale(s), first at {list(first)}", "block scales >= 0"


# -- per-tensor scalars ---------------------------------------------------------------------------

@rule("scales-present",
      "Every quantized module, each expert included, needs its own weight_scale, weight_scale_2 and input_scale "
      "(no input_scale for W4A16_NVFP4): TensorRT-LLM raises KeyError ('<i>.w1.input_scale') and vLLM leaves "
      "the torch.empty slot of that expert uninitialised.",
      TRT_MOE, VLLM_MODELOPT)
def _scales_present(L: Layout) -> Iterator[Finding]:
    for m in _quantized_with_weight(L):
        needed = ["weight_scale", "weight_scale_2"]
        if L.declared_algo(m.name) != "W4A16_NVFP4":
            needed.append("input_scale")
        for p in needed:
            if p not in m.params:
                yield f"{m.name}.{p}", "missing", "present (each quantized module has its own)"


@rule("orphan-quant-param",
      "A scale without its module's weight has no parameter to load into: vLLM's load_weights fails the "
      "name lookup and compressed-tensors' ModelOpt converter rejects orphan qparams.",
      VLLM_MODELOPT, CT_CONVERTER)
def _orphan_quant_param(L: Layout) -> Iterator[Finding]:
    for m in L.modules.values():
        if "weight" in m.params:
            continue
        for p in ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"):
            if p in m.params:
                yield m.params[p], f"{p} without {m.name}.weight", "a quantized module's weight beside it"


@rule("scalar-shape",
      "weight_scale_2 and input_scale are per-tensor: vLLM's PerTensorScaleParameter accepts only 0-d or [1] "
      "(it asserts shape[0] == 1; the FusedMoE loader cannot place a vector in an expert's slot) and "
      "TensorRT-LLM reshapes them to a scalar, so a per-channel vector fails to load.",
      VLLM_PARAMETER, VLLM_MOE_LOADER, TRT_MOE, TRT_LINEAR)
def _scalar_shape(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        for p in SCALARS:
            if (t := m.params.get(p)) and not (len(L.info(t).shape) <= 1 and _numel(L.info(t).shape) == 1):
                yield t, _shape(L.info(t).shape), "[] (0-d) or [1]"


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@rule("scalar-dtype",
      "The block scales were computed against the FP32 weight_scale_2 (and input_scale is FP32 by "
      "definition); both runtimes upcast a lower-precision copy silently (vLLM's parameter copy, TensorRT-LLM's "
      ".float()), shifting every dequantized weight or activation scale.",
      VLLM_MODELOPT, TRT_LINEAR)
def _scalar_dtype(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        for p in SCALARS:
            if (t := m.params.get(p)) and L.info(t).dtype != torch.float32:
                yield t, _dt(L.info(t).dtype), "float32"


@rule("scalar-value",
      "vLLM and TensorRT-LLM divide by input_scale (the activation global scale 1/input_scale) and multiply by "
      "weight_scale_2 (alpha); zero, negative, inf or NaN gives inf/NaN or sign-flipped outputs, and the MoE "
      "loaders take the max over experts, so one bad expert poisons the layer.",
      VLLM_MODELOPT, VLLM_MOE_ORACLE, TRT_LINEAR, TRT_MOE)
def _scalar_value(L: Layout) -> Iterator[Finding]:
    for m in L.quantized:
        for p in SCALARS:
            t = m.params.get(p)
            info = L.info(t) if t else None
            if info is None or not isinstance(info.dtype, torch.dtype) or not info.dtype.is_floating_point:
                continue
            v = _scalar(L, t)
            v = L.ckpt.load(t).float() if v is None else v  # a vector: scalar-shape, and its values here
            if v.numel() and not bool((torch.isfinite(v) & (v > 0)).all()):
                yield t, _values(v), "finite and > 0"


@rule("input-scale-normal",
      "Runtimes quantize activations under the global scale 1 / input_scale (vLLM: input_global_scale_inv, "
      "and 1 / max for an MoE layer); a subnormal input_scale has no finite float32 reciprocal (or one that "
      "overflows the FP8 block scales), so every activation becomes NaN or 0 (measured: an export with "
      "input_scale 1e-39 gives NaN in the reference runtime). It must be a normal float32 (>= 2**-126).",
      VLLM_GLOBAL_SCALE, TRT_LINEAR, TRT_MOE)
def _input_scale_normal(L: Layout) -> Iterator[Finding]:
    tiny = torch.finfo(torch.float32).tiny
    for m in L.quantized:
        if (t := m.params.get("input_scale")) and (v := _scalar(L, t)) is not None:
            if bool(torch.isfinite(v)) and 0 < v.item() < tiny:
                yield t, f"{v.item():.6g} (subnormal)", f">= {tiny:.6g} (a normal float32)"


@rule("expert-input-scale-shared",
      "vLLM quantizes an MoE layer's activations under one scale per projection: its NVFP4 emulation (and "
      "FlashInfer/CUTLASS paths) take the max input_scale over the layer's experts and quantize the hidden "
      "states once before routing; an expert exported with a smaller input_scale is then served with another "
      "scale than the one it was calibrated with, so the served model differs from the fake-quantized one.",
      VLLM_MOE_EMULATION, TRT_MOE, runtimes=("vllm",))
def _expert_input_scale_shared(L: Layout) -> Iterator[Finding]:
    for _, projs in sorted(L.experts.items()):
        first = {p for p in projs for g, u in GATE_UP if p in (g, u)}
        for role in (sorted(first), sorted(set(projs) - first)):
            vals = [(f"{m.name}.input_scale", v) for proj in role for _, m in sorted(projs[proj].items())
                    if (t := m.params.get("input_scale")) and (v := _scalar(L, t)) is not None
                    and bool(torch.isfinite(v)) and v.item() > 0]  # other values: scalar-value
            if len(vals) < 2:
                continue
            top = max(v.item() for _, v in vals)
            for name, v in vals:
                if v.item() != top:
                    yield name, f"{v.item():.9g}", f"{top:.9g} (the layer's max, which vLLM uses for every expert)"


@rule("fused-scales-shared",
      "Shards fused into one GEMM (q/k/v, gate/up, w1/w3) must carry bit-equal input_scale and weight_scale_2: "
      "TensorRT-LLM asserts it for fused linears and w1/w3 input scales; vLLM warns and uses the max (linear) "
      "or the gate's (MoE), which rescales the other shard's weights wrongly (its block scales were computed "
      "against its own weight_scale_2).",
      TRT_LINEAR, TRT_MOE, VLLM_MODELOPT)
def _fused_scales_shared(L: Layout) -> Iterator[Finding]:
    for g in L.fused_groups:
        for p in SCALARS:
            vals = [(n, v) for n in g.members if (t := L.modules[n].params.get(p)) and (v := _scalar(L, t)) is not None]
            if len(vals) < 2:
                continue
            ref_name, ref = vals[0]
            for n, v in vals[1:]:
                if v.view(torch.int32) != ref.view(torch.int32):
                    yield f"{n}.{p}", f"{v.item():.9g}", f"{ref.item():.9g} (= {ref_name}.{p}; fused shards share it)"


# -- experts --------------------------------------------------------------------------------------

@rule("experts-complete",
      "vLLM's FusedMoE allocates all E experts with torch.empty and loads them one by one (a missing expert "
      "stays uninitialised, a partly quantized layer cannot load with one method) and TensorRT-LLM indexes "
      "every '<i>.w1/w2/w3' key (KeyError); every expert 0..E-1 (E from config.json) needs every projection, "
      "all quantized alike (a run of missing experts is one finding, '<first>-<last>', so a huge E in "
      "config.json costs no more than the experts present).",
      VLLM_MOE_LOADER, VLLM_MODELOPT, TRT_MOE)
def _experts_complete(L: Layout) -> Iterator[Finding]:
    for container, projs in sorted(L.experts.items()):
        n = L.num_experts(container)
        for proj, members in sorted(projs.items()):
            # missing experts as runs between the present ones: as many findings as experts present,
            # however many config.json claims
            present = sorted(i for i in members if i < n)
            for lo, hi in zip([-1, *present], [*present, n], strict=True):
                if hi - lo == 2:
                    yield f"{container}.{lo + 1}.{proj}", "missing", f"present ({n} experts in config.json)"
                elif hi - lo > 2:
                    yield (f"{container}.{lo + 1}-{hi - 1}.{proj}", f"missing ({hi - lo - 1} experts)",
                           f"present ({n} experts in config.json)")
            for i in sorted(members):
                if i >= n:
                    yield _weight_name(members[i]), f"expert index {i}", f"< {n} (config.json)"
            states = {i: L.is_quantized(m) for i, m in members.items()}
            majority = Counter(states.values()).most_common(1)[0][0]
            for i, q in sorted(states.items()):
                if q != majority:
                    yield _weight_name(members[i]), "quantized" if q else "unquantized", (
                        "quantized like the other experts" if majority else "unquantized like the other experts")


# -- AWQ pre_quant_scale ----------------------------------------------------------------------------

@rule("pre-quant-scale-vllm",
      "vLLM 0.25.1 has no parameter for an AWQ pre_quant_scale in its NVFP4 linear or MoE layers: loading one "
      "raises ('There is no module or parameter named ...pre_quant_scale', expert weight_loader). The scale "
      "must be folded into the preceding layer at export (ModelOpt's AWQ fold_pre_quant_scale); a checkpoint "
      "that keeps it is TensorRT-LLM's NVFP4_AWQ form.",
      VLLM_LOAD_WEIGHTS, runtimes=("vllm",))
def _pqs_vllm(L: Layout) -> Iterator[Finding]:
    for m in L.modules.values():
        if (t := m.params.get("pre_quant_scale")) is not None:
            yield t, "an AWQ pre_quant_scale", "none (folded into the preceding layer)"

def _pqs_modules(L: Layout) -> Iterator[tuple[Module, str]]:
    for m in L.quantized:
        if (t := m.params.get("pre_quant_scale")) is not None:
            yield m, t


@rule("pre-quant-scale-shape",
      "pre_quant_scale multiplies the activation per input channel: TensorRT-LLM copies it into a parameter of "
      "shape [in_features] (NVFP4LinearMethod.load_weights_vanilla, fc31_act_scale), so it must be 1-D [in].",
      TRT_LINEAR, TRT_MOE, runtimes=("tensorrt-llm",))
def _pqs_shape(L: Layout) -> Iterator[Finding]:
    for m, t in _pqs_modules(L):
        shape = L.info(t).shape
        ref = L.reference_dims(m)
        if len(shape) != 1 or (ref and shape[0] != ref[1]):
            yield t, _shape(shape), f"[{ref[1]}] ([in])" if ref else "1-D [in]"


@rule("pre-quant-scale-value",
      "The activation is multiplied by pre_quant_scale before quantization (TensorRT-LLM _input_prepare); AWQ "
      "scales are positive, and zero, negative or non-finite values silence, flip or poison input channels.",
      TRT_LINEAR, TRT_MOE, runtimes=("tensorrt-llm",))
def _pqs_value(L: Layout) -> Iterator[Finding]:
    for _, t in _pqs_modules(L):
        info = L.info(t)
        if isinstance(info.dtype, torch.dtype) and info.dtype.is_floating_point:
            v = L.ckpt.load(t).float()
            if not bool((torch.isfinite(v) & (v > 0)).all()):
                bad = (~(torch.isfinite(v) & (v > 0))).nonzero()[0].tolist()
                yield t, f"{v[tuple(bad)].item()!r} at {bad}", "finite and > 0"


@rule("pre-quant-scale-dtype",
      "TensorRT-LLM asserts the activation dtype equals pre_quant_scale's dtype (NVFP4LinearMethod._input_prepare), "
      "so it must be stored in the model dtype of config.json.",
      TRT_LINEAR, runtimes=("tensorrt-llm",))
def _pqs_dtype(L: Layout) -> Iterator[Finding]:
    if L.dtype is None:
        return
    for _, t in _pqs_modules(L):
        if _dt(L.info(t).dtype) != L.dtype:
            yield t, _dt(L.info(t).dtype), f"{L.dtype} (config.json dtype)"


@rule("pre-quant-scale-algo",
      "Only NVFP4_AWQ declares AWQ smoothing (quant_algo, or the quantized_layers entry, with pre_quant_scale "
      "true); the flag does not promise a tensor (ModelOpt folds q/k/v and gate/up scales into the preceding "
      "norm), but a tensor on a module declared NVFP4 is applied by TensorRT-LLM's MoE (it looks for "
      "'0.w1.pre_quant_scale') and ignored elsewhere, so the runtimes disagree.",
      TRT_MOE, TRT_LINEAR, TRT_CONFIG, runtimes=("tensorrt-llm",))
def _pqs_algo(L: Layout) -> Iterator[Finding]:
    for m, t in _pqs_modules(L):
        algo = L.declared_algo(m.name)
        flag = L.quantized_layers.get(L.declared_entry(m.name) or "", {}).get(
            "pre_quant_scale", True) if L.mixed else L.quant.get("pre_quant_scale", True)
        if algo != "NVFP4_AWQ" or flag is False:
            yield t, f"present on a module declared {algo} (pre_quant_scale flag {flag})", "only on NVFP4_AWQ modules"


@rule("pre-quant-scale-experts",
      "All experts of a layer see the same input: TensorRT-LLM keeps one pre_quant_scale per MoE layer, decides "
      "from expert 0 whether there is one (KeyError for an expert without) and raises ValueError when experts "
      "differ beyond rtol 1e-5 / atol 1e-8.",
      TRT_MOE, runtimes=("tensorrt-llm",))
def _pqs_experts(L: Layout) -> Iterator[Finding]:
    for container, projs in sorted(L.experts.items()):
        for proj, members in sorted(projs.items()):
            have = {i: m.params["pre_quant_scale"] for i, m in members.items() if "pre_quant_scale" in m.params}
            if not have:
                continue
            for i in sorted(set(members) - set(have)):
                yield f"{container}.{i}.{proj}.pre_quant_scale", "missing (other experts have one)", \
                    "present for every expert of the layer, or for none"
            vals = {i: L.ckpt.load(t).float() for i, t in have.items()}
            keyed = Counter(v.numpy().tobytes() for v in vals.values())
            ref_bytes = keyed.most_common(1)[0][0]
            ref = next(v for v in vals.values() if v.numpy().tobytes() == ref_bytes)
            for i, v in sorted(vals.items()):
                if v.shape != ref.shape or not torch.allclose(v, ref, rtol=PQS_RTOL, atol=PQS_ATOL):
                    diff = (v - ref).abs().max().item() if v.shape == ref.shape else float("nan")
                    yield have[i], f"differs from the layer's other experts (max |diff| {diff:.3g})", \
                        "the same pre_quant_scale for every expert"


@rule("pre-quant-scale-fused",
      "Gate and up (w1/w3) share their input: TensorRT-LLM loads the gate's pre_quant_scale for a fused gate/up "
      "linear and the max of w1/w3 for MoE, so the shards must have bit-equal scales, or none.",
      TRT_LINEAR, TRT_MOE, runtimes=("tensorrt-llm",))
def _pqs_fused(L: Layout) -> Iterator[Finding]:
    for g in L.fused_groups:
        if g.kind != "gate_up":
            continue
        have = [(n, L.modules[n].params.get("pre_quant_scale")) for n in g.members]
        present = [(n, t) for n, t in have if t]
        if not present:
            continue
        for n, t in have:
            if not t:
                yield f"{n}.pre_quant_scale", "missing (its fused sibling has one)", "present on every shard, or none"
        ref_name, ref_t = present[0]
        ref = L.ckpt.load(ref_t)
        for _, t in present[1:]:
            v = L.ckpt.load(t)
            if v.shape != ref.shape or v.dtype != ref.dtype or not torch.equal(v, ref):
                yield t, "differs from its fused sibling", f"bit-equal to {ref_name}.pre_quant_scale"


@rule("pre-quant-scale-dropped",
      "TensorRT-LLM drops a pre_quant_scale where it has no slot for it: its fused QKV loader never reads one "
      "(ModelOpt folds it into the input layernorm) and its NVFP4 MoE reads only w1/w3 (fc31_act_scale), so on "
      "q/k/v or an expert's down projection it is silently ignored and the smoothed weights run unsmoothed.",
      TRT_LINEAR, TRT_MOE, runtimes=("tensorrt-llm",))
def _pqs_dropped(L: Layout) -> Iterator[Finding]:
    for m, t in _pqs_modules(L):
        g = L.group_of(m.name)
        if g is not None and g.kind == "qkv":
            yield t, "pre_quant_scale on a fused q/k/v shard", "none (folded into the preceding norm)"
        elif L.expert(m.name) is not None and (g is None or g.kind != "gate_up"):
            yield t, "pre_quant_scale on an expert's down projection", "none (folded into the up projection)"
