"""The checkpoint validator: good exports validate clean; one targeted corruption per rule is caught.

Every corruption copies a real export of a tiny twin, changes one thing, and must add exactly
the expected ``(rule, tensor)`` violations (compared with the same checkpoint before the
change, so a known export bug in the base does not hide or fake a result).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _utils.tiny_moe import ARCHS, TRANSFORMERS_5
from modelopt_fork.checkpoint import LoadError, validate_checkpoint
from modelopt_fork.checkpoint.layout import GATE_UP_GROUPS, Layout
from modelopt_fork.checkpoint.load import load_checkpoint
from modelopt_fork.checkpoint.rules import RULES

from .conftest import AWQ_KEPT, CONFIGS, copy_checkpoint

REPO = Path(__file__).resolve().parents[2]

# Violations a good export of the fork has today (the validator found one: transformers 4.57
# Mixtral AWQ exports kept the experts' w2 pre_quant_scale, which TensorRT-LLM's NVFP4 MoE never
# reads; patch 0010 folds it into w3).
# (arch, cfg, transformers >= 5) -> (rule, tensor-name pattern) of violations the export is
# known to produce. Empty: the Mixtral AWQ w2 pre_quant_scale found here is fixed by patch 0010.
KNOWN_EXPORT_VIOLATIONS: dict = {}


def pairs(violations) -> set[tuple[str, str]]:
    return {(v.rule, v.tensor) for v in violations}


def known(ckpt: Path, arch: str, cfg: str) -> set[tuple[str, str]]:
    entry = KNOWN_EXPORT_VIOLATIONS.get((arch, cfg, TRANSFORMERS_5))
    if entry is None:
        return set()
    rule_id, pattern = entry
    names = load_checkpoint(ckpt).tensors
    return {(rule_id, n) for n in names if re.search(pattern, n)}


# -- good checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_kept_scale_awq_export_is_tensorrt_llm_only(arch, exported):
    """TensorRT-LLM's NVFP4_AWQ form validates for TensorRT-LLM; for vLLM every kept
    pre_quant_scale and the NVFP4_AWQ labels are violations (vLLM 0.25.1 refused such a
    checkpoint: docs/vllm-stage.md)."""
    ckpt = exported(arch, AWQ_KEPT).path
    assert validate_checkpoint(ckpt, ("tensorrt-llm",)) == []
    vllm = validate_checkpoint(ckpt, ("vllm",))
    names = load_checkpoint(ckpt).tensors
    kept = {n for n in names if n.endswith(".pre_quant_scale")}
    assert kept and {v.tensor for v in vllm if v.rule == "pre-quant-scale-vllm"} == kept
    assert any(v.rule == "quant-algo-vllm" for v in vllm)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_export_validates(arch, cfg, exported):
    ckpt = exported(arch, cfg).path
    found = pairs(validate_checkpoint(ckpt))
    expected = known(ckpt, arch, cfg)
    assert found == expected, (
        f"{arch} {cfg}: unexpected {sorted(found - expected)[:6]}, missing known {sorted(expected - found)[:6]} "
        f"(update KNOWN_EXPORT_VIOLATIONS once the export is fixed)")


def as_mixed(src: Path, dst: Path) -> Path:
    """The same checkpoint declared MIXED_PRECISION, as ModelOpt 0.47 writes it (every quantized
    module in quantized_layers, no exclude_modules, config.json ``ignore: []``)."""
    copy_checkpoint(src, dst)
    L = Layout(load_checkpoint(dst))
    routers = {r.name for r in L.routers}
    entry = {"quant_algo": L.algo, "group_size": 16}
    if L.algo == "NVFP4_AWQ":
        entry.update(has_zero_point=False, pre_quant_scale=True)
    layers = {m.name: dict(entry) for m in L.quantized if m.name not in routers}
    kv = L.quant.get("kv_cache_quant_algo")

    def hf(h):
        h["quantization"] = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": kv, "quantized_layers": layers}

    def cfg(c):
        qc = c["quantization_config"]
        qc.update(quant_algo="MIXED_PRECISION", quantized_layers=layers, ignore=[])

    edit_json(dst, "hf_quant_config.json", hf)
    edit_json(dst, "config.json", cfg)
    return dst


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_precision_declaration_validates(arch, exported, tmp_path):
    ckpt = as_mixed(exported(arch, "NVFP4_DEFAULT_CFG").path, tmp_path / "mixed")
    assert validate_checkpoint(ckpt) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_scalars_of_shape_one_are_accepted(arch, exported, tmp_path):
    """vLLM's PerTensorScaleParameter and TensorRT-LLM's reshape([]) take [1] as well as 0-d."""
    ckpt = copy_checkpoint(exported(arch, "NVFP4_DEFAULT_CFG").path, tmp_path / "ckpt")
    changed = edit_tensors(ckpt, lambda t: [t.__setitem__(k, v.reshape(1)) for k, v in list(t.items())
                                            if k.endswith(("weight_scale_2", "input_scale"))])
    assert changed > 0
    assert validate_checkpoint(ckpt) == []


# -- corruption helpers -----------------------------------------------------------------------------

def edit_json(ckpt: Path, name: str, fn: Callable[[dict], object]) -> None:
    path = ckpt / name
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def edit_quant(ckpt: Path, hf_fn: Callable[[dict], object], cfg_fn: Callable[[dict], object] | None = None):
    """Change hf_quant_config.json's ``quantization`` and (the same way, unless told) config.json's
    ``quantization_config``, so only the intended rule sees a difference."""
    edit_json(ckpt, "hf_quant_config.json", lambda h: hf_fn(h["quantization"]))
    if cfg_fn is not None:
        edit_json(ckpt, "config.json", lambda c: cfg_fn(c["quantization_config"]))


def edit_tensors(ckpt: Path, fn: Callable[[dict[str, torch.Tensor]], object]) -> int:
    """Apply ``fn`` to the tensors of every shard (new tensors go to the first); number changed."""
    shards = sorted(ckpt.glob("*.safetensors"))
    tensors = {}
    home = {}
    for f in shards:
        for k, v in load_file(f).items():
            tensors[k], home[k] = v, f
    before = {k: (v.dtype, v.shape, v.clone()) for k, v in tensors.items()}
    fn(tensors)
    changed = sum(1 for k, v in tensors.items() if k not in before or before[k][0] != v.dtype
                  or before[k][1] != v.shape or not torch.equal(before[k][2], v)) + len(set(before) - set(tensors))
    for f in shards:
        save_file({k: v.contiguous() for k, v in tensors.items() if home.get(k, shards[0]) == f}, f,
                  metadata={"format": "pt"})
    return changed


@dataclass(frozen=True)
class Targets:
    """Modules of the base checkpoint a corruption aims at, found by structure."""

    L: Layout

    @property
    def container(self) -> str:
        return sorted(self.L.experts)[0]

    @property
    def n_experts(self) -> int:
        return self.L.num_experts(self.container)

    def proj(self, role: str) -> str:
        projs = set(self.L.experts[self.container])
        for gate, up in GATE_UP_GROUPS:
            if gate in projs and up in projs:
                down = sorted(projs - {gate, up})[0]
                return {"gate": gate, "up": up, "down": down}[role]
        raise AssertionError(f"no gate/up pair among {projs}")

    def expert(self, i: int, role: str) -> str:
        return f"{self.container}.{i}.{self.proj(role)}"

    def qkv(self) -> tuple[str, ...]:
        return next(g.members for g in self.L.fused_groups if g.kind == "qkv")

    def lone(self, with_pqs: bool = False) -> str | None:
        """A quantized module outside experts and fused groups (o_proj-like)."""
        for m in sorted(self.L.quantized, key=lambda m: m.name):
            if (self.L.expert(m.name) is None and self.L.group_of(m.name) is None
                    and m.name not in {r.name for r in self.L.routers}
                    and ("pre_quant_scale" in m.params) == with_pqs):
                return m.name
        return None

    def router(self) -> str:
        return self.L.routers[0].name

    def in_dim(self, module: str) -> int:
        return self.L.reference_dims(self.L.modules[module])[1]

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.L.dtype)

    def expert_pqs(self) -> bool:
        return "pre_quant_scale" in self.L.modules[self.expert(0, "gate")].params


Corrupt = Callable[[Path, Targets], "set[tuple[str, str]] | None"]


@dataclass(frozen=True)
class Corruption:
    rule: str
    variant: str
    base: str  # "default" | "awq" | "mixed"
    apply: Corrupt

    @property
    def id(self) -> str:
        return f"{self.rule}[{self.variant}]" if self.variant else self.rule


CORRUPTIONS: list[Corruption] = []


def corruption(rule_id: str, variant: str = "", base: str = "default"):
    def reg(fn: Corrupt):
        CORRUPTIONS.append(Corruption(rule_id, variant, base, fn))
        return fn

    return reg


def set_tensor(ckpt: Path, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    def go(t):
        t[name] = fn(t[name])

    assert edit_tensors(ckpt, go) == 1, f"{name} did not change"


def drop_tensors(ckpt: Path, pred: Callable[[str], bool]) -> None:
    def go(t):
        for k in [k for k in t if pred(k)]:
            del t[k]

    assert edit_tensors(ckpt, go) > 0


# -- one corruption per rule (and variants) -------------------------------------------------------------

@corruption("quant-config-present")
def _(d, T):
    (d / "hf_quant_config.json").unlink()
    return {("quant-config-present", "hf_quant_config.json")}


@corruption("quant-config-present", "config.json")
def _(d, T):
    edit_json(d, "config.json", lambda c: c.pop("quantization_config"))
    return {("quant-config-present", "config.json:quantization_config")}


@corruption("quant-algo-supported")
def _(d, T):
    edit_quant(d, lambda q: q.update(quant_algo="FP8"), lambda q: q.update(quant_algo="FP8"))
    key = "hf_quant_config.json:quantization.quant_algo"
    return {("quant-algo-supported", key), ("quant-algo-vllm", key)}  # neither runtime has it


@corruption("quant-algo-supported", "layer", base="mixed")
def _(d, T):
    key = T.lone()
    edit_quant(d, lambda q: q["quantized_layers"][key].update(quant_algo="INT4_AWQ"),
               lambda q: q["quantized_layers"][key].update(quant_algo="INT4_AWQ"))
    name = f"hf_quant_config.json:quantization.quantized_layers.{key}.quant_algo"
    return {("quant-algo-supported", name), ("quant-algo-vllm", name)}


@corruption("quant-config-keys")
def _(d, T):
    edit_quant(d, lambda q: q.pop("kv_cache_quant_algo"))
    return {("quant-config-keys", "hf_quant_config.json:quantization.kv_cache_quant_algo")}


@corruption("quant-config-keys", "layer", base="mixed")
def _(d, T):
    key = T.lone()
    edit_quant(d, lambda q: q["quantized_layers"][key].pop("quant_algo"),
               lambda q: q["quantized_layers"][key].pop("quant_algo"))
    return {("quant-config-keys", f"hf_quant_config.json:quantization.quantized_layers.{key}.quant_algo")}


@corruption("group-size")
def _(d, T):
    edit_quant(d, lambda q: q.update(group_size=32))
    return {("group-size", "hf_quant_config.json:quantization.group_size")}


@corruption("group-size", "layer", base="mixed")
def _(d, T):
    key = T.lone()
    edit_quant(d, lambda q: q["quantized_layers"][key].update(group_size=32),
               lambda q: q["quantized_layers"][key].update(group_size=32))
    return {("group-size", f"hf_quant_config.json:quantization.quantized_layers.{key}.group_size")}


@corruption("config-json-consistent", "ignore")
def _(d, T):
    edit_json(d, "config.json", lambda c: c["quantization_config"]["ignore"].pop())
    return {("config-json-consistent", "config.json:quantization_config.ignore")}


@corruption("config-json-consistent", "quant_method")
def _(d, T):
    edit_json(d, "config.json", lambda c: c["quantization_config"].update(quant_method="compressed-tensors"))
    return {("config-json-consistent", "config.json:quantization_config.quant_method")}


@corruption("config-json-consistent", "quantized_layers", base="mixed")
def _(d, T):
    key = T.lone()
    edit_json(d, "config.json", lambda c: c["quantization_config"]["quantized_layers"].pop(key))
    return {("config-json-consistent", "config.json:quantization_config.quantized_layers")}


@corruption("excluded-module-quantized")
def _(d, T):
    q = T.qkv()[0]
    edit_quant(d, lambda h: h["exclude_modules"].append(q), lambda c: c["ignore"].append(q))
    return {("excluded-module-quantized", f"{q}.weight")}


@corruption("quantized-module-undeclared", base="mixed")
def _(d, T):
    key = T.lone()
    edit_quant(d, lambda q: q["quantized_layers"].pop(key), lambda q: q["quantized_layers"].pop(key))
    return {("quantized-module-undeclared", f"{key}.weight")}


@corruption("declared-layer-unquantized", base="mixed")
def _(d, T):
    norm = next(m.name for m in sorted(T.L.modules.values(), key=lambda m: m.name)
                if "weight" in m.params and len(T.L.info(m.params["weight"]).shape) == 1)
    entry = {"quant_algo": "NVFP4", "group_size": 16}
    edit_quant(d, lambda q: q["quantized_layers"].update({norm: entry}),
               lambda q: q["quantized_layers"].update({norm: entry}))
    return {("declared-layer-unquantized", f"hf_quant_config.json:quantization.quantized_layers.{norm}")}


@corruption("router-excluded", "not-excluded")
def _(d, T):
    r = T.router()
    drop = [p for p in T.L.exclude if r == p or r.startswith(p + ".") or fnmatch(r, p)]
    assert drop, f"{r} is not excluded in the base"
    edit_quant(d, lambda q: q.update(exclude_modules=[p for p in q["exclude_modules"] if p not in drop]),
               lambda q: q.update(ignore=[p for p in q["ignore"] if p not in drop]))
    return {("router-excluded", f"{r}.weight")}


@corruption("router-excluded", "quantized")
def _(d, T):
    r = T.router()
    n_exp, hidden = T.L.info(f"{r}.weight").shape

    def go(t):
        g = torch.Generator().manual_seed(3)
        t[f"{r}.weight"] = torch.randint(0, 256, (n_exp, hidden // 2), generator=g, dtype=torch.uint8)
        t[f"{r}.weight_scale"] = torch.ones(n_exp, hidden // 16).to(torch.float8_e4m3fn)
        t[f"{r}.weight_scale_2"] = torch.tensor(0.01)
        t[f"{r}.input_scale"] = torch.tensor(0.01)

    edit_tensors(d, go)
    return {("router-excluded", f"{r}.weight")}


@corruption("weight-dtype")
def _(d, T):
    m = T.expert(0, "gate")
    set_tensor(d, f"{m}.weight", lambda w: torch.randn(w.shape[0], 2 * w.shape[1], generator=torch.Generator()
                                                         .manual_seed(1)))
    return {("weight-dtype", f"{m}.weight")}


@corruption("weight-packed-shape", "expert-in")
def _(d, T):
    m = T.expert(1, "up")
    set_tensor(d, f"{m}.weight", lambda w: w[:, :-8].clone())
    return {("weight-packed-shape", f"{m}.weight")}


@corruption("weight-packed-shape", "not-16")
def _(d, T):
    m = T.lone()
    set_tensor(d, f"{m}.weight", lambda w: w[:, :-1].clone())
    return {("weight-packed-shape", f"{m}.weight")}


@corruption("weight-scale-dtype")
def _(d, T):
    m = T.expert(0, "down")
    set_tensor(d, f"{m}.weight_scale", lambda s: s.float())
    return {("weight-scale-dtype", f"{m}.weight_scale")}


@corruption("weight-scale-shape")
def _(d, T):
    m = T.qkv()[0]
    set_tensor(d, f"{m}.weight_scale", lambda s: s[:, :-1].clone())
    return {("weight-scale-shape", f"{m}.weight_scale")}


@corruption("weight-scale-shape", "flat")
def _(d, T):
    m = T.expert(2, "down")
    set_tensor(d, f"{m}.weight_scale", lambda s: s.flatten().clone())
    return {("weight-scale-shape", f"{m}.weight_scale")}


def _set_byte(value: int, where: str):
    def fn(s):
        b = s.contiguous().view(torch.uint8).clone()
        flat = b.view(-1)
        if where == "first":
            i = 0
        else:  # the first finite non-zero scale
            i = int(((flat & 0x7F) != 0).logical_and((flat & 0x7F) != 0x7F).nonzero()[0])
        flat[i] = value if value >= 0 else (int(flat[i]) | 0x80)
        return b.view(torch.float8_e4m3fn)

    return fn


@corruption("weight-scale-finite", "0x7f")
def _(d, T):
    m = T.expert(2, "gate")
    set_tensor(d, f"{m}.weight_scale", _set_byte(0x7F, "first"))
    return {("weight-scale-finite", f"{m}.weight_scale")}


@corruption("weight-scale-finite", "0xff")
def _(d, T):
    m = T.qkv()[1]
    set_tensor(d, f"{m}.weight_scale", _set_byte(0xFF, "first"))
    return {("weight-scale-finite", f"{m}.weight_scale")}


@corruption("weight-scale-sign")
def _(d, T):
    m = T.expert(2, "up")
    set_tensor(d, f"{m}.weight_scale", _set_byte(-1, "nonzero"))
    return {("weight-scale-sign", f"{m}.weight_scale")}


@corruption("scales-present", "expert-input_scale")
def _(d, T):
    m = T.expert(T.n_experts - 1, "up")
    drop_tensors(d, lambda k: k == f"{m}.input_scale")
    return {("scales-present", f"{m}.input_scale")}


@corruption("scales-present", "expert-weight_scale_2")
def _(d, T):
    m = T.expert(0, "down")
    drop_tensors(d, lambda k: k == f"{m}.weight_scale_2")
    return {("scales-present", f"{m}.weight_scale_2")}


@corruption("orphan-quant-param")
def _(d, T):
    name = T.qkv()[0].rpartition(".")[0] + ".bogus_proj.input_scale"
    edit_tensors(d, lambda t: t.update({name: torch.tensor(0.01)}))
    return {("orphan-quant-param", name)}


@corruption("scalar-shape", "per-channel-input_scale")
def _(d, T):
    m = T.lone()
    set_tensor(d, f"{m}.input_scale", lambda s: s.reshape(1).expand(T.in_dim(m)).clone())
    return {("scalar-shape", f"{m}.input_scale")}


@corruption("scalar-shape", "2-d")
def _(d, T):
    m = T.expert(0, "down")
    set_tensor(d, f"{m}.weight_scale_2", lambda s: s.reshape(1, 1))
    return {("scalar-shape", f"{m}.weight_scale_2")}


@corruption("scalar-dtype")
def _(d, T):
    m = T.lone()
    set_tensor(d, f"{m}.weight_scale_2", lambda s: s.to(torch.bfloat16))
    return {("scalar-dtype", f"{m}.weight_scale_2")}


def _scalar_value(param: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Corrupt:
    def apply(d, T):
        m = T.expert(0, "down")
        set_tensor(d, f"{m}.{param}", fn)
        return {("scalar-value", f"{m}.{param}")}

    return apply


corruption("scalar-value", "zero")(_scalar_value("weight_scale_2", torch.zeros_like))
corruption("scalar-value", "negative")(_scalar_value("input_scale", torch.neg))
corruption("scalar-value", "inf")(_scalar_value("input_scale", lambda s: torch.full_like(s, float("inf"))))
corruption("scalar-value", "nan")(_scalar_value("weight_scale_2", lambda s: torch.full_like(s, float("nan"))))


@corruption("fused-scales-shared", "qkv-weight_scale_2")
def _(d, T):
    q, k = T.qkv()[:2]
    set_tensor(d, f"{k}.weight_scale_2", lambda s: s * 2)
    return {("fused-scales-shared", f"{k}.weight_scale_2")}


@corruption("fused-scales-shared", "expert-input_scale")
def _(d, T):
    up = T.expert(0, "up")
    set_tensor(d, f"{up}.input_scale", lambda s: s * 0.5)
    # below its gate's and below the layer's max, which vLLM would quantize its input with
    return {("fused-scales-shared", f"{up}.input_scale"), ("expert-input-scale-shared", f"{up}.input_scale")}


@corruption("experts-complete", "missing")
def _(d, T):
    c = sorted(T.L.experts)[-1]
    m = f"{c}.{T.L.num_experts(c) - 1}.{T.proj('gate')}"
    drop_tensors(d, lambda k: k.startswith(m + "."))
    return {("experts-complete", m)}


@corruption("experts-complete", "extra")
def _(d, T):
    c, n = T.container, T.n_experts

    def go(t):
        for k in [k for k in t if k.startswith(f"{c}.0.")]:
            t[f"{c}.{n}." + k[len(f"{c}.0."):]] = t[k].clone()

    edit_tensors(d, go)
    return {("experts-complete", f"{c}.{n}.{p}.weight") for p in T.L.experts[c]}


@corruption("experts-complete", "unquantized")
def _(d, T):
    m = T.expert(1, "down")
    out, half = T.L.info(f"{m}.weight").shape

    def go(t):
        for k in [k for k in t if k.startswith(m + ".")]:
            del t[k]
        t[f"{m}.weight"] = torch.randn(out, 2 * half, generator=torch.Generator().manual_seed(2))

    edit_tensors(d, go)
    return {("experts-complete", f"{m}.weight")}


@corruption("pre-quant-scale-shape", base="awq")
def _(d, T):
    m = T.lone(with_pqs=True)
    if m is None:
        return None
    set_tensor(d, f"{m}.pre_quant_scale", lambda p: p[:-1].clone())
    return {("pre-quant-scale-shape", f"{m}.pre_quant_scale")}


@corruption("pre-quant-scale-value", base="awq")
def _(d, T):
    m = T.lone(with_pqs=True)
    if m is None:
        return None

    def zero(p):
        p = p.clone()
        p[3] = 0
        return p

    set_tensor(d, f"{m}.pre_quant_scale", zero)
    return {("pre-quant-scale-value", f"{m}.pre_quant_scale")}


@corruption("pre-quant-scale-dtype", base="awq")
def _(d, T):
    m = T.lone(with_pqs=True)
    if m is None:
        return None
    set_tensor(d, f"{m}.pre_quant_scale", lambda p: p.double())
    return {("pre-quant-scale-dtype", f"{m}.pre_quant_scale")}


def add_pre_quant_scale(d, T) -> str:
    """A pre_quant_scale of ones on a lone (o_proj-like) module of the checkpoint; its tensor name."""
    m = T.lone()
    edit_tensors(d, lambda t: t.update({f"{m}.pre_quant_scale": torch.ones(T.in_dim(m), dtype=T.dtype)}))
    return f"{m}.pre_quant_scale"


@corruption("pre-quant-scale-algo")
def _(d, T):
    return {("pre-quant-scale-algo", add_pre_quant_scale(d, T))}


@corruption("pre-quant-scale-algo", "mixed", base="mixed")
def _(d, T):
    return {("pre-quant-scale-algo", add_pre_quant_scale(d, T))}


@corruption("pre-quant-scale-experts", "differ", base="awq")
def _(d, T):
    if not T.expert_pqs():
        return None
    gate, up = T.expert(1, "gate"), T.expert(1, "up")
    set_tensor(d, f"{gate}.pre_quant_scale", lambda p: p * 1.01)
    set_tensor(d, f"{up}.pre_quant_scale", lambda p: p * 1.01)
    return {("pre-quant-scale-experts", f"{m}.pre_quant_scale") for m in (gate, up)}


@corruption("pre-quant-scale-experts", "missing", base="awq")
def _(d, T):
    if not T.expert_pqs():
        return None
    gate, up = T.expert(1, "gate"), T.expert(1, "up")
    drop_tensors(d, lambda k: k in (f"{gate}.pre_quant_scale", f"{up}.pre_quant_scale"))
    return {("pre-quant-scale-experts", f"{m}.pre_quant_scale") for m in (gate, up)}


@corruption("pre-quant-scale-fused", base="awq")
def _(d, T):
    if not T.expert_pqs():
        return None
    ups = [T.expert(i, "up") for i in range(T.n_experts)]

    def go(t):
        for u in ups:
            t[f"{u}.pre_quant_scale"] = t[f"{u}.pre_quant_scale"] * 1.01

    edit_tensors(d, go)
    return {("pre-quant-scale-fused", f"{u}.pre_quant_scale") for u in ups}


@corruption("pre-quant-scale-dropped", "qkv", base="awq")
def _(d, T):
    q = T.qkv()[0]
    edit_tensors(d, lambda t: t.update({f"{q}.pre_quant_scale": torch.ones(T.in_dim(q), dtype=T.dtype)}))
    return {("pre-quant-scale-dropped", f"{q}.pre_quant_scale")}


@corruption("quant-algo-vllm", "awq")
def _(d, T):
    edit_quant(d, lambda q: q.update(quant_algo="NVFP4_AWQ"), lambda q: q.update(quant_algo="NVFP4_AWQ"))
    return {("quant-algo-vllm", "hf_quant_config.json:quantization.quant_algo")}


@corruption("quant-algo-vllm", "mixed-layer", base="mixed")
def _(d, T):
    m = T.lone()

    def awq(q):
        q["quantized_layers"][m]["quant_algo"] = "NVFP4_AWQ"

    edit_quant(d, awq, awq)
    return {("quant-algo-vllm", f"hf_quant_config.json:quantization.quantized_layers.{m}.quant_algo")}


@corruption("input-scale-normal")
def _(d, T):
    m = T.lone()
    set_tensor(d, f"{m}.input_scale", lambda s: torch.full_like(s, 1e-39))
    return {("input-scale-normal", f"{m}.input_scale")}


@corruption("quantized-modules-present")
def _(d, T):
    quantized = {m.name for m in T.L.quantized}
    drop_tensors(d, lambda k: k.rpartition(".")[0] in quantized)
    return {("quantized-modules-present", "hf_quant_config.json:quantization.quant_algo")}


@corruption("index-matches-shards")
def _(d, T):
    weight_map = {n: info.file for n, info in T.L.ckpt.tensors.items()}
    ghost = next(iter(weight_map)) + "_ghost"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {**weight_map, ghost: weight_map[
        next(iter(weight_map))]}}))
    return {("index-matches-shards", f"model.safetensors.index.json:weight_map.{ghost}")}


@corruption("expert-input-scale-shared")
def _(d, T):
    down = T.expert(1, "down")
    set_tensor(d, f"{down}.input_scale", lambda s: s * 0.5)
    return {("expert-input-scale-shared", f"{down}.input_scale")}


@corruption("pre-quant-scale-vllm")
def _(d, T):
    return {("pre-quant-scale-vllm", add_pre_quant_scale(d, T))}


# -- corruption tests --------------------------------------------------------------------------------

def test_every_rule_has_a_corruption():
    covered = {c.rule for c in CORRUPTIONS}
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert set(ids) - covered == set(), "rules without a corruption test"
    assert covered - set(ids) == set(), "corruptions naming unknown rules"


def _base(exported, arch: str, base: str, tmp_path: Path) -> Path:
    if base == "mixed":
        return as_mixed(exported(arch, "NVFP4_DEFAULT_CFG").path, tmp_path / "base")
    # "awq": the form that carries pre_quant_scale tensors (the folded AWQ export has none)
    cfg = {"default": "NVFP4_DEFAULT_CFG", "awq": AWQ_KEPT}[base]
    return copy_checkpoint(exported(arch, cfg).path, tmp_path / "base")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda c: c.id)
def test_corruption_is_caught(corrupt, arch, exported, tmp_path):
    """Validated for the runtimes the rule is about (a TensorRT-LLM NVFP4_AWQ rule on the form
    vLLM refuses altogether; a vLLM rule without TensorRT-LLM's)."""
    runtimes = next(r.runtimes for r in RULES if r.id == corrupt.rule)
    base = _base(exported, arch, corrupt.base, tmp_path)
    before = pairs(validate_checkpoint(base, runtimes))
    targets = Targets(Layout(load_checkpoint(base)))
    ckpt = copy_checkpoint(base, tmp_path / "corrupt")
    expected = corrupt.apply(ckpt, targets)
    if expected is None:
        pytest.skip(f"{arch} {corrupt.base} export has nothing this corruption applies to "
                    f"(e.g. no expert pre_quant_scale with fused experts)")
    after = validate_checkpoint(ckpt, runtimes)
    new = pairs(after) - before
    assert new == expected, "\n".join(v.format() for v in after)
    for v in after:
        if (v.rule, v.tensor) in expected:
            assert v.found and v.expected and "\n" not in v.format()


# -- unreadable input ----------------------------------------------------------------------------------

def test_unreadable_inputs_raise_load_error(tmp_path, exported):
    with pytest.raises(LoadError, match="not a directory"):
        validate_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match="no \\*.safetensors"):
        validate_checkpoint(tmp_path / "empty")
    bad_json = copy_checkpoint(exported(ARCHS[0], "NVFP4_DEFAULT_CFG").path, tmp_path / "bad-json")
    (bad_json / "hf_quant_config.json").write_text("{not json")
    with pytest.raises(LoadError, match="hf_quant_config.json: not readable JSON"):
        validate_checkpoint(bad_json)
    bad_st = copy_checkpoint(exported(ARCHS[0], "NVFP4_DEFAULT_CFG").path, tmp_path / "bad-st")
    next(bad_st.glob("*.safetensors")).write_bytes(b"\x00" * 7)
    with pytest.raises(LoadError, match="not a readable safetensors file"):
        validate_checkpoint(bad_st)


# -- command line -------------------------------------------------------------------------------------

def _cli(capsys, *args) -> tuple[int, list[str], str]:
    from modelopt_fork.cli import main

    capsys.readouterr()  # what building the checkpoint printed (modelopt's notices) is not the CLI's
    rc = main(["validate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_cli_clean_checkpoint_exits_0(exported, capsys):
    rc, lines, _ = _cli(capsys, exported(ARCHS[0], "NVFP4_DEFAULT_CFG").path)
    assert rc == 0
    assert len(lines) == 1 and f"all {len(RULES)} rules" in lines[0]


def test_cli_prints_one_line_per_violation_and_exits_1(exported, capsys, tmp_path):
    ckpt = copy_checkpoint(exported(ARCHS[0], "NVFP4_DEFAULT_CFG").path, tmp_path / "ckpt")
    T = Targets(Layout(load_checkpoint(ckpt)))
    k, down = T.qkv()[1], T.expert(0, "down")
    set_tensor(ckpt, f"{k}.weight_scale_2", lambda s: s * 2)
    set_tensor(ckpt, f"{down}.input_scale", lambda s: s.reshape(1).expand(T.in_dim(down)).clone())
    rc, lines, _ = _cli(capsys, ckpt)
    assert rc == 1
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{down}.input_scale (model.safetensors): scalar-shape: found [{T.in_dim(down)}]; "
                               "expected [] (0-d) or [1]")
    assert lines[1].startswith(f"{k}.weight_scale_2 (model.safetensors): fused-scales-shared: found ")
    assert lines[2].startswith("validate: 2 violation(s) of 2 rule(s) (fused-scales-shared, scalar-shape)")


def test_cli_unreadable_exits_2(tmp_path, capsys):
    rc, lines, err = _cli(capsys, tmp_path / "nope")
    assert rc == 2 and lines == []
    assert "cannot read checkpoint" in err and "nope" in err


def test_cli_runs_outside_a_fork_checkout(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELOPT_FORK_ROOT", raising=False)
    rc, _, _ = _cli(capsys, exported(ARCHS[0], "NVFP4_DEFAULT_CFG").path)
    assert rc == 0


# -- the rule list and its document ----------------------------------------------------------------------

def test_rules_say_why_and_where():
    for r in RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r.id), r.id
        assert r.why.endswith(".") and len(r.why) > 60, r.id
        assert r.sources and all(s.split(":")[0] in {"vllm", "TensorRT-LLM", "compressed-tensors"}
                                 for s in r.sources), r.id


def test_rules_doc_is_current():
    from modelopt_fork.checkpoint.docs import DOC, render

    text = (REPO / DOC).read_text(encoding="utf-8")
    assert text == render(), f"{DOC} is stale: run `python -m modelopt_fork.checkpoint.docs --write`"
    for r in RULES:
        assert f"`{r.id}`" in text
