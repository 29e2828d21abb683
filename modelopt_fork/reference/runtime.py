"""Load an exported NVFP4 checkpoint into a transformers model that runs the reference numerics.

``load_reference_model(checkpoint_dir)`` builds the model from the exported ``config.json``
(``quantization_config`` dropped), loads every unquantized tensor, and puts every quantized
linear of the checkpoint (a uint8 ``X.weight`` with ``X.weight_scale``) in place as:

* ``ReferenceLinear`` where the model has an ``nn.Linear``: weight dequantized once
  (``nvfp4.dequantize_weight``), then per call ``x * pre_quant_scale`` (if exported),
  NVFP4 activation quantization under ``input_scale`` (``nvfp4.quantize_activation``), matmul;
* ``ReferenceFusedExperts`` where the model holds experts as 3-D parameters (transformers >= 5:
  ``gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``): each expert runs with its own exported
  weights and scales, with the HF experts' eager forward (routing, activation, gate * up).

Nothing is looked up by architecture name. Which checkpoint key belongs to which model tensor
(and, for fused experts, to which expert and which rows) is found by running transformers'
own save-time conversion (``revert_weight_conversion``, the inverse of what ``from_pretrained``
does) on a probe state dict whose values tag every tensor and every expert row. Anything in the
checkpoint that cannot be placed, or any model tensor left without a value, raises with its name.

Computation is in float32 whatever ``dtype`` the rest of the model runs in (runtimes accumulate
NVFP4 products in float32); outputs are cast back to the input dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .nvfp4 import dequantize_weight, quantize_activation

__all__ = ["ReferenceLinear", "ReferenceFusedExperts", "load_reference_model", "load_checkpoint_tensors",
           "ReferenceLoadError"]

QUANT_SUFFIXES = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "bias")


class ReferenceLoadError(RuntimeError):
    """A checkpoint tensor that cannot be placed, or a model tensor that got no value."""


def load_checkpoint_tensors(checkpoint_dir) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (:func:`modelopt_fork.checkpoint.load.load_tensors`)."""
    from ..checkpoint.load import LoadError, load_tensors

    try:
        return load_tensors(checkpoint_dir)
    except LoadError as e:
        raise ReferenceLoadError(str(e)) from e


@dataclass
class _QuantWeight:
    """One exported quantized linear: dequantized weight and its activation scales.

    ``packed`` / ``block_scale`` / ``weight_scale_2`` keep the checkpoint's tensors so the weight
    can be dequantized again under another global scale (:meth:`with_weight_scale_2`: vLLM
    dequantizes every shard of a fused layer with one ``weight_scale_2``).
    """

    name: str
    weight: torch.Tensor  # float32 [out, in]
    input_scale: torch.Tensor | None
    pre_quant_scale: torch.Tensor | None
    bias: torch.Tensor | None
    packed: torch.Tensor | None = None
    block_scale: torch.Tensor | None = None
    weight_scale_2: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, name: str, t: dict[str, torch.Tensor], device) -> _QuantWeight:
        def get(suffix, required=True):
            key = f"{name}.{suffix}"
            if key not in t:
                if required:
                    raise ReferenceLoadError(f"{key} missing for quantized linear {name}")
                return None
            return t[key].to(device)

        packed, block_scale, ws2 = get("weight"), get("weight_scale"), get("weight_scale_2")
        try:
            w = dequantize_weight(packed, block_scale, ws2)
        except ValueError as e:
            raise ReferenceLoadError(f"{name}: {e}") from e
        pqs = get("pre_quant_scale", False)
        if pqs is not None and tuple(pqs.shape) != (w.shape[1],):
            raise ReferenceLoadError(f"{name}.pre_quant_scale has shape {tuple(pqs.shape)}, expected ({w.shape[1]},)")
        bias = get("bias", False)
        return cls(name, w, get("input_scale", False), None if pqs is None else pqs.float(),
                   None if bias is None else bias.float(), packed, block_scale, ws2.float().reshape(()))

    def with_scales(self, input_scale: torch.Tensor | None, weight_scale_2: torch.Tensor) -> _QuantWeight:
        """This linear with another activation scale and its weight dequantized under ``weight_scale_2``."""
        w = self.weight
        if not torch.equal(weight_scale_2, self.weight_scale_2):
            w = dequantize_weight(self.packed, self.block_scale, weight_scale_2)
        return _QuantWeight(self.name, w, input_scale, self.pre_quant_scale, self.bias, self.packed,
                            self.block_scale, weight_scale_2)


def _quantized_matmul(x: torch.Tensor, weight: torch.Tensor, input_scale, pre_quant_scale, bias, convention,
                      dtype: torch.dtype = torch.float32, round_output: bool = True) -> torch.Tensor:
    """float32 ``x`` -> NVFP4 activation fake quant (after pre_quant_scale) -> ``x @ weight.T + bias``.

    ``convention="vllm"``: as vLLM's emulation backends compute it, the quantized activation and
    the dequantized weight are rounded to the model ``dtype`` and multiplied with float32
    accumulation; the product is rounded to ``dtype`` (unless ``round_output`` is False: the fused
    MoE kernel applies the routing weight to the float32 accumulator first) and the bias is added
    in ``dtype``. The other conventions compute in float32 throughout.
    """
    if pre_quant_scale is not None:
        x = x * pre_quant_scale
    if input_scale is not None:
        x = quantize_activation(x, input_scale, convention=convention)
    if convention != "vllm":
        return nn.functional.linear(x, weight, bias)
    y = nn.functional.linear(x.to(dtype).float(), weight.to(dtype).float())
    if not round_output:
        return y
    y = y.to(dtype)
    return (y if bias is None else y + bias.to(dtype)).float()


class ReferenceLinear(nn.Module):
    """An exported NVFP4 linear: dequantized weight, activation quantized with ``input_scale``."""

    def __init__(self, q: _QuantWeight, convention: str = "modelopt"):
        super().__init__()
        self.name = q.name
        self.convention = convention
        self.out_features, self.in_features = q.weight.shape
        self.quant = q
        self._set(q)

    def _set(self, q: _QuantWeight) -> None:
        self.quant = q
        self.register_buffer("weight", q.weight)
        self.register_buffer("bias", q.bias)
        self.register_buffer("input_scale", q.input_scale)
        self.register_buffer("pre_quant_scale", q.pre_quant_scale)

    def set_scales(self, input_scale: torch.Tensor | None, weight_scale_2: torch.Tensor) -> None:
        """Run with ``input_scale`` and the weight dequantized under ``weight_scale_2``."""
        self._set(self.quant.with_scales(input_scale, weight_scale_2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _quantized_matmul(x.float(), self.weight, self.input_scale, self.pre_quant_scale, self.bias,
                              self.convention, x.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.name}: in={self.in_features}, out={self.out_features}, "
                f"pre_quant_scale={self.pre_quant_scale is not None}")


class _ExpertProjection(nn.Module):
    """One expert's projection, as exported pieces (e.g. gate and up) concatenated along rows.

    Consecutive pieces with the same activation scales share one activation quantization and
    one matmul (as a fused w13 GEMM runs them); pieces whose scales differ each quantize the
    input with their own.
    """

    def __init__(self, pieces: list[_QuantWeight], convention: str):
        super().__init__()
        self.convention = convention
        self.sources = [p.name for p in pieces]  # checkpoint names of the pieces, in row order
        for p in pieces:
            if p.bias is not None:
                raise ReferenceLoadError(f"{p.name}: fused experts with a bias are not supported")
        self.set_pieces(pieces)

    def set_pieces(self, pieces: list[_QuantWeight]) -> None:
        self.pieces = pieces
        groups: list[list[_QuantWeight]] = []
        for p in pieces:
            if groups and _same_scales(groups[-1][0], p):
                groups[-1].append(p)
            else:
                groups.append([p])
        for i in range(len(groups), getattr(self, "n", 0)):  # groups merged: drop the stale buffers
            for b in ("weight", "input_scale", "pre_quant_scale"):
                del self._buffers[f"{b}_{i}"]
        self.n = len(groups)
        for i, g in enumerate(groups):
            self.register_buffer(f"weight_{i}", torch.cat([p.weight for p in g]))
            self.register_buffer(f"input_scale_{i}", g[0].input_scale)
            self.register_buffer(f"pre_quant_scale_{i}", g[0].pre_quant_scale)

    def forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32, round_output: bool = True
                ) -> torch.Tensor:
        outs = [_quantized_matmul(x, getattr(self, f"weight_{i}"), getattr(self, f"input_scale_{i}"),
                                  getattr(self, f"pre_quant_scale_{i}"), None, self.convention, dtype,
                                  round_output) for i in range(self.n)]
        return outs[0] if self.n == 1 else torch.cat(outs, dim=-1)


def _same_scales(a: _QuantWeight, b: _QuantWeight) -> bool:
    def eq(u, v):
        return (u is None and v is None) or (u is not None and v is not None and torch.equal(u, v))

    return eq(a.input_scale, b.input_scale) and eq(a.pre_quant_scale, b.pre_quant_scale)


class ReferenceFusedExperts(nn.Module):
    """Replacement for a transformers >= 5 fused experts module, one exported expert at a time.

    Reproduces the HF eager experts forward ``forward(hidden_states, top_k_index, top_k_weights)``:
    for each expert hit (ascending), its tokens go through the first projection
    (``gate_up_proj``: gate rows then up rows, ``act(gate) * up``; or non-gated ``up_proj``:
    ``act(up)``), then ``down_proj``, are scaled by their routing weight and summed into the output.
    """

    def __init__(self, name: str, num_experts: int, act_fn, gated: bool, first: list[list[_QuantWeight]],
                 down: list[list[_QuantWeight]], convention: str = "modelopt"):
        super().__init__()
        self.name = name
        self.convention = convention
        self.num_experts = num_experts
        self.act_fn = act_fn
        self.gated = gated
        self.first = nn.ModuleList(_ExpertProjection(p, convention) for p in first)
        self.down = nn.ModuleList(_ExpertProjection(p, convention) for p in down)

    @property
    def sources(self) -> list[str]:
        """Checkpoint names of the quantized linears this module runs."""
        return [n for proj in (*self.first, *self.down) for n in proj.sources]

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on float32 tokens ``x [n, hidden]`` (no routing weight)."""
        h = self.first[e](x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act_fn(gate) * up
        else:
            h = self.act_fn(h)
        return self.down[e](h)

    def _vllm_expert_forward(self, e: int, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype
                             ) -> torch.Tensor:
        """Expert ``e`` as vLLM's emulated fused MoE runs it: w13 GEMM rounded to ``dtype``, the
        activation in ``dtype``, the w2 GEMM's float32 accumulator times the routing weight, then
        rounded to ``dtype``."""
        h = self.first[e](x, dtype).to(dtype)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act_fn(gate) * up
        else:
            h = self.act_fn(h)
        y = self.down[e](h.float(), dtype, round_output=False)
        return (y * weight.float()).to(dtype)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
                ) -> torch.Tensor:
        vllm = self.convention == "vllm"
        out = torch.zeros_like(hidden_states, dtype=torch.float32 if vllm else hidden_states.dtype)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            top_k_pos, token_idx = torch.where(mask[e])
            weight = top_k_weights[token_idx, top_k_pos, None]
            if vllm:
                y = self._vllm_expert_forward(e, hidden_states[token_idx].float(), weight, hidden_states.dtype)
            else:
                y = self.expert_forward(e, hidden_states[token_idx].float()) * weight
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out.to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{self.name}: {self.num_experts} experts, gated={self.gated}"


# ---------------------------------------------------------------------------------------------
# Which checkpoint key goes where


@dataclass(frozen=True)
class _Place:
    """Where a checkpoint tensor lives in the model: a whole tensor, or rows of one expert of a 3-D one."""

    model_key: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


def _fused_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding experts as 3-D parameters of their own (``[num_experts, out, in]``)."""
    return {name: m for name, m in model.named_modules()
            if any(p.dim() == 3 for p in m.parameters(recurse=False))}


def _checkpoint_places(model: nn.Module, fused: dict[str, nn.Module]) -> dict[str, _Place]:
    """Checkpoint key -> place in the model, by running transformers' save-time conversion on tags."""
    sd = model.state_dict()
    fused_params = {f"{m}.{n}" for m, mod in fused.items() for n, p in mod.named_parameters(recurse=False)
                    if p.dim() == 3}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5: checkpoint keys are module paths, no fused experts
        if fused_params:
            raise ReferenceLoadError(f"3-D expert parameters {sorted(fused_params)} but this transformers has no "
                                     "weight conversion to map checkpoint keys onto them") from None
        return {k: _Place(k) for k in sd}
    names = list(sd)
    base = 1 + max([sd[k].shape[0] * sd[k].shape[1] for k in fused_params], default=0)
    probe = {}
    for i, k in enumerate(names):
        t = sd[k]
        if k in fused_params:  # tag = i * base + expert * rows + row, constant along the input dim
            e, r = t.shape[:2]
            tag = (i * base + torch.arange(e * r, dtype=torch.float64)).view(e, r, 1).expand(t.shape)
        else:
            tag = torch.full((), float(i * base), dtype=torch.float64).expand(t.shape)
        probe[k] = tag
    reverted = revert_weight_conversion(model, probe)
    places = {}
    for ck, tag in reverted.items():
        first = tag.reshape(-1)[0].item() if tag.numel() else None
        if first is None:
            continue
        i, local = divmod(int(first), base)
        mk = names[i]
        if mk in fused_params and tag.dim() == 3:  # left whole by transformers: the exporter's own split
            places.update(_exporter_expert_places(ck, mk, sd[mk].shape))
        elif mk in fused_params:
            r = sd[mk].shape[1]
            rows = tag[:, 0] - i * base if tag.dim() == 2 else None
            if (rows is None or not torch.equal(tag[:, -1], tag[:, 0])
                    or not torch.equal(rows, rows[0] + torch.arange(len(rows), dtype=torch.float64))
                    or int(rows[0]) // r != int(rows[-1]) // r):
                raise ReferenceLoadError(f"checkpoint tensor {ck} is not a row range of one expert of {mk} "
                                         "(transposed or permuted layouts are not supported)")
            e, r0 = divmod(int(rows[0]), r)
            places[ck] = _Place(mk, e, (r0, r0 + len(rows)))
        else:
            if local != 0 or not bool((tag == first).all()) or tuple(tag.shape) != tuple(sd[mk].shape):
                raise ReferenceLoadError(f"checkpoint tensor {ck} is a transformed copy of {mk}; not supported")
            places[ck] = _Place(mk)
    return places


def _exporter_expert_places(ck: str, mk: str, shape) -> dict[str, _Place]:
    """Per-expert keys ModelOpt's exporter writes for a 3-D expert tensor that transformers keeps fused.

    ``modelopt/torch/export/moe_utils.py::_export_fused_experts`` names them
    ``{module}.{e}.gate_proj`` (rows ``[0, I)`` of ``gate_up_proj``), ``{module}.{e}.up_proj`` (rows
    ``[I, 2I)``, or all of a non-gated ``up_proj``) and ``{module}.{e}.down_proj``.
    """
    prefix, _, attr = ck.rpartition(".")
    experts, rows = shape[:2]
    if attr == "gate_up_proj":
        split = [("gate_proj", 0, rows // 2), ("up_proj", rows // 2, rows)]
    elif attr in ("up_proj", "down_proj"):
        split = [(attr, 0, rows)]
    else:
        raise ReferenceLoadError(f"{mk}: 3-D expert tensor {attr!r} has no known per-expert export naming")
    return {f"{prefix}.{e}.{proj}.weight": _Place(mk, e, (r0, r1)) for e in range(experts) for proj, r0, r1 in split}


# ---------------------------------------------------------------------------------------------


def _build_model(checkpoint_dir: Path, dtype: torch.dtype) -> nn.Module:
    import transformers

    cfg = json.loads((checkpoint_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ReferenceLoadError(f"{checkpoint_dir / 'config.json'} has no model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def load_reference_model(checkpoint_dir, device="cpu", dtype=torch.float32, convention: str = "modelopt"
                         ) -> nn.Module:
    """The exported model with every quantized linear running the reference NVFP4 numerics.

    ``convention``: how activations are quantized, see ``nvfp4.quantize_activation``
    (``"modelopt"``: bit-exact with ModelOpt's fake quant; ``"runtime"``: vLLM / TensorRT-LLM's
    reciprocal-multiply form).
    """
    checkpoint_dir = Path(checkpoint_dir)
    model = _build_model(checkpoint_dir, dtype)
    tensors = load_checkpoint_tensors(checkpoint_dir)
    fused = _fused_modules(model)
    places = _checkpoint_places(model, fused)

    quantized = sorted(k[: -len(".weight")] for k, v in tensors.items()
                       if k.endswith(".weight") and v.dtype == torch.uint8)
    for q in quantized:
        if f"{q}.weight_scale" not in tensors:
            raise ReferenceLoadError(f"{q}.weight is uint8 (packed NVFP4) but {q}.weight_scale is missing")
    consumed = {f"{q}.{s}" for q in quantized for s in QUANT_SUFFIXES if f"{q}.{s}" in tensors}

    # quantized linears: nn.Linear -> ReferenceLinear; pieces of fused experts collected per module
    pieces: dict[str, dict[str, dict[int, list[tuple[int, _QuantWeight]]]]] = {}
    replaced = set()
    for q in quantized:
        place = places.get(f"{q}.weight")
        if place is None:
            raise ReferenceLoadError(f"quantized linear {q}: no model tensor corresponds to {q}.weight")
        qw = _QuantWeight.from_checkpoint(q, tensors, device)
        if convention == "vllm" and qw.pre_quant_scale is not None:
            raise ReferenceLoadError(
                f"{q}.pre_quant_scale: vLLM's NVFP4 layers have no parameter for an AWQ pre_quant_scale and "
                "refuse the checkpoint (models/utils.py, routed_experts.py); it must be folded at export")
        module_name, _, attr = place.model_key.rpartition(".")
        if place.expert is None:
            mod = model.get_submodule(module_name)
            if attr != "weight" or not isinstance(mod, nn.Linear):
                raise ReferenceLoadError(f"quantized linear {q} maps to {place.model_key}, "
                                         f"a {type(mod).__name__} (expected an nn.Linear weight)")
            if tuple(qw.weight.shape) != tuple(mod.weight.shape):
                raise ReferenceLoadError(f"{q}: dequantized weight {tuple(qw.weight.shape)} vs "
                                         f"{module_name}.weight {tuple(mod.weight.shape)}")
            if (qw.bias is None) != (mod.bias is None):
                raise ReferenceLoadError(f"{q}: bias present in checkpoint: {qw.bias is not None}, "
                                         f"in model: {mod.bias is not None}")
            _replace(model, module_name, ReferenceLinear(qw, convention))
            replaced.add(module_name)
        else:
            pieces.setdefault(module_name, {}).setdefault(attr, {}).setdefault(place.expert, []).append(
                (place.rows[0], qw))

    for module_name, by_attr in pieces.items():
        _replace(model, module_name, _fused_replacement(module_name, fused[module_name], by_attr, convention))
        replaced.add(module_name)

    # everything else is a plain tensor of the (remaining) model
    sd = model.state_dict()
    loaded = set()
    for k, v in tensors.items():
        if k in consumed:
            continue
        place = places.get(k)
        if place is None or place.expert is not None or place.model_key not in sd:
            where = "no model tensor" if place is None else f"{place.model_key} (replaced or partial)"
            raise ReferenceLoadError(f"checkpoint tensor {k} {tuple(v.shape)} {v.dtype} cannot be placed: {where}")
        target = sd[place.model_key]
        if tuple(target.shape) != tuple(v.shape):
            raise ReferenceLoadError(f"{k}: checkpoint shape {tuple(v.shape)} vs model {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(v.to(target.dtype))
        loaded.add(place.model_key)

    ptr = {}
    for k, t in sd.items():
        ptr.setdefault((t.data_ptr(), tuple(t.shape)), []).append(k)
    tied_loaded = {k for ks in ptr.values() if loaded & set(ks) for k in ks}
    missing = [k for k in sd if k not in tied_loaded and not any(k.startswith(r + ".") for r in replaced)]
    if missing:
        raise ReferenceLoadError(f"model tensors without a value in {checkpoint_dir}: {missing}")
    if convention == "vllm":
        _share_scales_like_vllm(model)
    return model.to(device).eval()


def _fused_replacement(name: str, mod: nn.Module, by_attr: dict, convention: str) -> ReferenceFusedExperts:
    params = {n: p for n, p in mod.named_parameters(recurse=False) if p.dim() == 3}
    if "gate_up_proj" in params:
        first_attr, gated = "gate_up_proj", True
    elif "up_proj" in params:
        first_attr, gated = "up_proj", False
    else:
        raise ReferenceLoadError(f"{name}: 3-D parameters {sorted(params)}; expected gate_up_proj or up_proj "
                                 "and down_proj")
    if set(params) != {first_attr, "down_proj"}:
        raise ReferenceLoadError(f"{name}: unsupported 3-D parameters {sorted(params)}")
    if not hasattr(mod, "act_fn"):
        raise ReferenceLoadError(f"{name}: fused experts without act_fn")
    num_experts = params[first_attr].shape[0]
    lists = {}
    for attr in (first_attr, "down_proj"):
        per_expert = by_attr.get(attr, {})
        rows = params[attr].shape[1]
        lists[attr] = []
        for e in range(num_experts):
            got = sorted(per_expert.get(e, []), key=lambda t: t[0])
            covered = 0
            for r0, qw in got:
                if r0 != covered:
                    raise ReferenceLoadError(f"{name}.{attr} expert {e}: rows {covered}..{r0} not in the checkpoint "
                                             f"(or overlapping pieces at {qw.name})")
                covered += qw.weight.shape[0]
            if covered != rows:
                raise ReferenceLoadError(f"{name}.{attr} expert {e}: checkpoint covers {covered} of {rows} rows "
                                         "with quantized weights")
            lists[attr].append([qw for _, qw in got])
    return ReferenceFusedExperts(name, num_experts, mod.act_fn, gated, lists[first_attr], lists["down_proj"],
                                 convention)


# ---------------------------------------------------------------------------------------------
# The scales vLLM actually uses (convention="vllm")

# Sibling linears vLLM loads into one fused layer (each model's ``packed_modules_mapping``):
# q/k/v -> qkv_proj, gate/up -> gate_up_proj, DeepSeek MLA q_a/kv_a -> fused_qkv_a_proj. It
# keeps one ``input_scale`` and one ``weight_scale_2`` per fused layer, the max over the shards
# (quantization/modelopt.py, ModelOptNvFp4LinearMethod.process_weights_after_loading), and
# dequantizes every shard's block scales under it.
DENSE_FUSED_SHARDS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("q_a_proj", "kv_a_proj_with_mqa"))
# Per-expert projections vLLM stacks into the w13 (gate, up) and w2 (down) tensors of a fused MoE.
EXPERT_W13 = (("gate_proj", "up_proj"), ("w1", "w3"))
EXPERT_W2 = ("down_proj", "w2")


def _max(scales: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [s.float().reshape(()) for s in scales if s is not None]
    return torch.stack(present).max() if present else None


def _share_scales_like_vllm(model: nn.Module) -> None:
    """Give every quantized linear the activation and weight global scales vLLM 0.25.1 runs it with.

    * Fused shards of a dense layer (``DENSE_FUSED_SHARDS``): the max ``input_scale`` and the max
      ``weight_scale_2`` of the shards.
    * MoE experts (NVFP4 emulation MoE backend, ``fused_moe/oracle/nvfp4.py``
      ``convert_to_nvfp4_moe_kernel_format``): one activation scale for all w13 inputs of the
      layer (the max over experts and over gate/up) and one for all w2 inputs (the max over
      experts); each expert's up projection is dequantized with its gate's ``weight_scale_2``
      (``ModelOptNvFp4FusedMoE.process_weights_after_loading`` keeps ``w13_weight_scale_2[:, 0]``).
    """
    in_expert_lists = set()
    for module in model.modules():
        if isinstance(module, ReferenceFusedExperts):
            _share_fused_expert_scales(module)
        experts = getattr(module, "experts", None)
        if isinstance(experts, nn.ModuleList) and any(isinstance(m, ReferenceLinear) for m in experts.modules()):
            _share_expert_list_scales(experts)
            in_expert_lists |= {id(m) for m in experts.modules()}
    for module in model.modules():
        if id(module) in in_expert_lists:
            continue
        for names in DENSE_FUSED_SHARDS:
            shards = [getattr(module, n, None) for n in names]
            if all(isinstance(m, ReferenceLinear) for m in shards):
                a = _max([m.input_scale for m in shards])
                w = _max([m.quant.weight_scale_2 for m in shards])
                for m in shards:
                    m.set_scales(a, w)


def _share_expert_list_scales(experts: nn.ModuleList) -> None:
    """Per-expert linears (transformers < 5 layout): the layer-wide w13 / w2 activation scales."""
    w13: list[tuple[ReferenceLinear, ReferenceLinear | None]] = []
    w2: list[ReferenceLinear] = []
    for expert in experts:
        pair = next(((getattr(expert, g), getattr(expert, u, None)) for g, u in EXPERT_W13
                     if isinstance(getattr(expert, g, None), ReferenceLinear)), None)
        if pair is not None:
            w13.append(pair)
        w2 += [getattr(expert, n) for n in EXPERT_W2 if isinstance(getattr(expert, n, None), ReferenceLinear)]
    a13 = _max([m.input_scale for pair in w13 for m in pair if m is not None])
    a2 = _max([m.input_scale for m in w2])
    for gate, up in w13:
        gate.set_scales(a13, gate.quant.weight_scale_2)
        if up is not None:
            up.set_scales(a13, gate.quant.weight_scale_2)
    for m in w2:
        m.set_scales(a2, m.quant.weight_scale_2)


def _share_fused_expert_scales(module: ReferenceFusedExperts) -> None:
    """3-D fused experts: the same rules on the exported pieces (gate rows first, then up rows)."""
    a13 = _max([p.input_scale for proj in module.first for p in proj.pieces])
    a2 = _max([p.input_scale for proj in module.down for p in proj.pieces])
    for proj in module.first:
        ws2 = proj.pieces[0].weight_scale_2
        proj.set_pieces([p.with_scales(a13, ws2) for p in proj.pieces])
    for proj in module.down:
        proj.set_pieces([p.with_scales(a2, p.weight_scale_2) for p in proj.pieces])
