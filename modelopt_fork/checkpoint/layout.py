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

from .load import Checkpoint, LoadError

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
MAX_EXPERT_DIGITS = 9  # a billion experts; longer indices are not a model (and int() refuses 4300+ digits)
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
        self._vote_cache: dict[tuple, Counter] = {}
        self.scalars: dict[str, torch.Tensor | None] = {}  # per-tensor scalars read (rules._scalar)
        self.modules: dict[str, Module] = {}
        for name in ckpt.tensors:
            module, param = split_name(name)
            self.modules.setdefault(module, Module(module)).params[param] = name
        for module in self.modules:
            if (m := _EXPERT.match(module)) and len(m["idx"]) > MAX_EXPERT_DIGITS:
                raise LoadError(f"{ckpt.path}: tensor {module[:80]}...: an expert index of {len(m['idx'])} digits")

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
        parts = module.split(".")
        return next((key for i in range(len(parts), 0, -1) if (key := ".".join(parts[:i])) in self.quantized_layers),
                    None)

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
        return 1 + self.max_expert(container)

    def max_expert(self, container: str) -> int:
        return max(i for proj in self.experts[container].values() for i in proj)

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

    @cached_property
    def _group_index(self) -> dict[str, FusedGroup]:
        return {member: g for g in reversed(self.fused_groups) for member in g.members}

    def group_of(self, module: str) -> FusedGroup | None:
        return self._group_index.get(module)

    # -- shape references ------------------------------------------------------------------------
    def reference_dims(self, m: Module) -> tuple[int, int] | None:
        """The module's (out, in) as its peers agree on it: out from the other experts of the same
        projection, in also from its fused siblings and its pre_quant_scale. A strict majority of
        at least three votes overrides the module's own weight; otherwise its weight decides."""
        own = self.packed_dims(m)
        g = self.group_of(m.name)
        out_votes = self._votes((m.name,), 0)
        in_votes = self._votes(g.members if g else (m.name,), 1)
        pqs = m.params.get("pre_quant_scale")
        if pqs and len(self.info(pqs).shape) == 1:
            in_votes = in_votes + Counter([self.info(pqs).shape[0]])

        def pick(votes: Counter, fallback: int | None) -> int | None:
            if votes.total() >= 3:
                value, count = votes.most_common(1)[0]
                if count * 2 > votes.total():
                    return value
            return fallback

        out = pick(out_votes, own[0] if own else None)
        inn = pick(in_votes, own[1] if own else None)
        return (out, inn) if out is not None and inn is not None else None

    def _votes(self, members: tuple[str, ...], dim: int) -> Counter:
        """Dim ``dim`` of the packed weights of ``members`` and all their expert peers, counted
        (cached per peer set, so a layer of E experts costs E, not E squared)."""
        key = tuple(sorted({self._peer_key(n) for n in members}))
        if (key, dim) not in self._vote_cache:
            names = {p.name for n in members for p in self.expert_peers(self.modules[n])}
            self._vote_cache[key, dim] = Counter(d[dim] for n in names if (d := self.packed_dims(self.modules[n])))
        return self._vote_cache[key, dim]

    def _peer_key(self, module: str) -> tuple[str, str]:
        e = self.expert(module)
        return (e.container, e.proj) if e else (module, "")

    # -- routers -------------------------------------------------------------------------------
    @cached_property
    def routers(self) -> list[Module]:
        found = []
        for m in self.modules.values():
            w = m.params.get("weight")
            if w is None or len(self.info(w).shape) != 2:
                continue
            parts = m.name.split(".")
            for i in range(len(parts) - 1, 0, -1):  # each ancestor that holds an experts container
                container, rel = ".".join(parts[:i]) + ".experts", parts[i:]
                if container not in self.experts or rel[0] == "experts" or self.info(w).shape[0] != self.num_experts(
                        container):
                    continue
                if any("gate" in part and not part.endswith("_proj") or "router" in part for part in rel):
                    found.append(m)
                    break
        return sorted(found, key=lambda m: m.name)

    @cached_property
    def dtype(self) -> str | None:
        """The model's activation dtype from config.json (``dtype``, older ``torch_dtype``)."""
        cfg = self.ckpt.model_config
        d = cfg.get("dtype") or cfg.get("torch_dtype")
        return str(d).removeprefix("torch.") if d else None
