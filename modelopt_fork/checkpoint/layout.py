"""The structure runtimes see in a checkpoint, found from tensor names and shapes alone.

No per-architecture tables: experts are ``<container>.experts.<i>.<proj>``; fused groups are
sibling modules (same parent, any depth) named like the shards runtimes concatenate
(vLLM's ``qkv_proj`` / ``gate_up_proj`` packing, TensorRT-LLM's fused QKV / gate-up linears,
the FusedMoE ``w1``/``w3``); routers are the 2-D weights beside an ``experts`` container,
named ``*gate*``/``*router*``, with one output row per expert.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cached_property

import torch

from .load import Checkpoint

QUANT_PARAMS = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")
SCALARS = ("weight_scale_2", "input_scale")
# Sibling shards that runtimes fuse into one GEMM. The first is the attention QKV group;
# the others are gate/up groups (TensorRT-LLM keeps a pre_quant_scale for those).
QKV_GROUP = ("q_proj", "k_proj", "v_proj")
GATE_UP_GROUPS = (("gate_proj", "up_proj"), ("w1", "w3"))
FUSED_GROUPS = (QKV_GROUP, *GATE_UP_GROUPS)
# config.json keys holding the number of routed experts, in the order runtimes look.
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_EXPERT = re.compile(r"^(?P<container>.+\.experts)\.(?P<idx>\d+)\.(?P<proj>.+)$")
NVFP4_ALGOS = ("NVFP4", "NVFP4_AWQ", "W4A16_NVFP4")


@dataclass
class Module:
    name: str
    params: dict[str, str] = field(default_factory=dict)  # param name ("weight", ...) -> tensor name

    @property
    def parent(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2]


@dataclass(frozen=True)
class Expert:
    container: str  # "model.layers.0.mlp.experts"
    index: int
    proj: str  # "gate_proj", "w1", ...


@dataclass(frozen=True)
class FusedGroup:
    parent: str
    members: tuple[str, ...]  # full module names, in group order
    kind: str  # "qkv" | "gate_up"


def split_name(tensor: str) -> tuple[str, str]:
    module, _, param = tensor.rpartition(".")
    return module, param


class Layout:
    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self.modules: dict[str, Module] = {}
        for name in ckpt.tensors:
            module, param = split_name(name)
            self.modules.setdefault(module, Module(module)).params[param] = name

    # -- quantization config -----------------------------------------------------------------
    @cached_property
    def quant(self) -> dict:
        return self.ckpt.quantization or {}

    @property
    def algo(self) -> str:
        return str(self.quant.get("quant_algo") or "").upper()

    @property
    def mixed(self) -> bool:
        return self.algo == "MIXED_PRECISION"

    @cached_property
    def exclude(self) -> list[str]:
        ex = self.quant.get("exclude_modules")
        return [str(p) for p in ex] if isinstance(ex, list) else []

    @cached_property
    def quantized_layers(self) -> dict[str, dict]:
        ql = self.quant.get("quantized_layers")
        return {k: v for k, v in ql.items() if isinstance(v, dict)} if isinstance(ql, dict) else {}

    def exclude_match(self, module: str) -> str | None:
        """The exclude_modules entry matching the module or an ancestor by name, or as a wildcard
        (vLLM's ``is_layer_excluded`` and TensorRT-LLM both treat entries as fnmatch patterns)."""
        return next((p for p in self.exclude if module == p or module.startswith(p + ".") or fnmatch(module, p)),
                    None)

    def is_excluded(self, module: str) -> bool:
        return self.exclude_match(module) is not None

    def declared_entry(self, module: str) -> str | None:
        """The quantized_layers key covering ``module`` (itself or an ancestor), MIXED_PRECISION only."""
        best = None
        for key in self.quantized_layers:
            if (module == key or module.startswith(key + ".")) and (best is None or len(key) > len(best)):
                best = key
        return best

    def declared_algo(self, module: str) -> str | None:
        if not self.mixed:
            return self.algo or None
        key = self.declared_entry(module)
        return str(self.quantized_layers[key].get("quant_algo", "")).upper() if key else None

    # -- modules ---------------------------------------------------------------------------
    def info(self, tensor: str):
        return self.ckpt.tensors[tensor]

    def is_quantized(self, m: Module) -> bool:
        """A packed (uint8) weight, or any NVFP4 scale: what a runtime loads with an NVFP4 method."""
        w = m.params.get("weight")
        return (w is not None and self.info(w).dtype == torch.uint8) or any(
            p in m.params for p in ("weight_scale", "weight_scale_2", "input_scale"))

    @cached_property
    def quantized(self) -> list[Module]:
        return [m for m in self.modules.values() if self.is_quantized(m)]

    def packed_dims(self, m: Module) -> tuple[int, int] | None:
        """(out, in) claimed by a 2-D uint8 weight (two E2M1 codes per byte)."""
        w = m.params.get("weight")
        if w is None:
            return None
        info = self.info(w)
        if info.dtype != torch.uint8 or len(info.shape) != 2:
            return None
        return info.shape[0], 2 * info.shape[1]

    # -- experts -----------------------------------------------------------------------------
    def expert(self, module: str) -> Expert | None:
        m = _EXPERT.match(module)
        return Expert(m["container"], int(m["idx"]), m["proj"]) if m else None

    @cached_property
    def experts(self) -> dict[str, dict[str, dict[int, Module]]]:
        """container -> proj -> expert index -> module."""
        out: dict[str, dict[str, dict[int, Module]]] = defaultdict(lambda: defaultdict(dict))
        for m in self.modules.values():
            e = self.expert(m.name)
            if e:
                out[e.container][e.proj][e.index] = m
        return {c: dict(p) for c, p in out.items()}

    def num_experts(self, container: str) -> int:
        cfg = self.ckpt.model_config
        for key in EXPERT_COUNT_KEYS:
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
        return 1 + max(i for proj in self.experts[container].values() for i in proj)

    def expert_peers(self, m: Module) -> list[Module]:
        e = self.expert(m.name)
        return list(self.experts[e.container][e.proj].values()) if e else [m]

    # -- fused groups --------------------------------------------------------------------------
    @cached_property
    def fused_groups(self) -> list[FusedGroup]:
        groups = []
        parents = {m.parent for m in self.quantized}
        for parent in sorted(parents):
            for names in FUSED_GROUPS:
                members = tuple(f"{parent}.{n}" for n in names if f"{parent}.{n}" in self.modules)
                if len(members) >= 2:
                    groups.append(FusedGroup(parent, members, "qkv" if names == QKV_GROUP else "gate_up"))
        return groups

    def group_of(self, module: str) -> FusedGroup | None:
        for g in self.fused_groups:
            if module in g.members:
                return g
        return None

    # -- shape references ------------------------------------------------------------------------
    def reference_dims(self, m: Module) -> tuple[int, int] | None:
        """The module's (out, in) as its peers agree on it: out from the other experts of the same
        projection, in also from its fused siblings and its pre_quant_scale. A strict majority of
        at least three votes overrides the module's own weight; otherwise its weight decides."""
        own = self.packed_dims(m)
        out_votes = [d[0] for p in self.expert_peers(m) if (d := self.packed_dims(p))]
        in_peers = set(p.name for p in self.expert_peers(m))
        g = self.group_of(m.name)
        if g:
            for member in g.members:
                in_peers.update(p.name for p in self.expert_peers(self.modules[member]))
        in_votes = [d[1] for n in in_peers if (d := self.packed_dims(self.modules[n]))]
        pqs = m.params.get("pre_quant_scale")
        if pqs and len(self.info(pqs).shape) == 1:
            in_votes.append(self.info(pqs).shape[0])

        def pick(votes: list[int], fallback: int | None) -> int | None:
            if len(votes) >= 3:
                value, count = Counter(votes).most_common(1)[0]
                if count * 2 > len(votes):
                    return value
            return fallback

        out = pick(out_votes, own[0] if own else None)
        inn = pick(in_votes, own[1] if own else None)
        return (out, inn) if out is not None and inn is not None else None

    # -- routers -------------------------------------------------------------------------------
    @cached_property
    def routers(self) -> list[Module]:
        found = []
        for container in self.experts:
            parent = container[: -len(".experts")]
            n = self.num_experts(container)
            for m in self.modules.values():
                if not m.name.startswith(parent + ".") or m.name.startswith(container + "."):
                    continue
                rel = m.name[len(parent) + 1:].split(".")
                w = m.params.get("weight")
                if w is None or len(self.info(w).shape) != 2 or self.info(w).shape[0] != n:
                    continue
                if any("gate" in part and not part.endswith("_proj") or "router" in part for part in rel):
                    found.append(m)
        return sorted(found, key=lambda m: m.name)

    @cached_property
    def dtype(self) -> str | None:
        """The model's activation dtype from config.json (``dtype``, older ``torch_dtype``)."""
        cfg = self.ckpt.model_config
        d = cfg.get("dtype") or cfg.get("torch_dtype")
        return str(d).removeprefix("torch.") if d else None
