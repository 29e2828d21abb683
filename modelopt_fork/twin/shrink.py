"""Shrink a Hugging Face config to a tiny twin, keeping what matters for MoE export.

Kept: the model class (``model_type``), the expert layout (per-expert or fused, decided
by transformers itself), shared experts, dense-before-MoE layers, routing flags (groups,
scoring, normalisation), attention flavour (GQA vs MHA, MLA ranks present or not, sliding
vs full layers in the same order), gate/up naming. Shrunk: widths, depth, vocabulary.
The number of experts defaults to ``max(4, 2*top_k)`` capped at the real count; pass
``num_experts="real"`` for the real count. Unknown keys are left alone, so an MoE that is
not bundled but uses the usual key names works without code changes; the size keys it does
not know are bounded by the parameter budget of :func:`.build.twin_config` (a clear error).
Width keys missing from the config are shrunk too (``defaults``: the config class's values
for them), and keys that make transformers fetch code or kernels from the Hub
(``HUB_KEYS``) are removed at every level. Width keys the tables do not name are bounded by
their kind (``_WIDTH_KINDS``: intermediate sizes, ranks, head dims, state sizes, head counts;
Mamba-2 heads stay ``expand * hidden / head_dim``), and derived keys are recomputed from the
shrunk ones (``qk_head_dim = qk_nope_head_dim + qk_rope_head_dim``). Depth: the layers kept
are chosen by :mod:`.layout` (per-layer lists cut, dense-first counts and layer indices
renumbered), checked against the built model by ``build.twin_config``.

``widths="real"`` keeps every width of the real model (hidden, intermediate and expert
intermediate sizes, attention heads, head dims, LoRA ranks, positions, sliding window) and
shrinks only depth and vocabulary (to ``REAL_WIDTHS_VOCAB``): a twin whose layers cost what
the real model's layers cost, for timing and memory studies. The vocabulary only sizes the
embedding and the LM head, which NVFP4 export does not quantize (``*lm_head*`` is disabled in
the NVFP4 configs; embeddings are not linears) and copies once, independently of the experts.
"""

from __future__ import annotations

import copy
import math
import re

from .layout import choose_layers, cut

# Width-like keys and their tiny value (applied only where the key is present and set).
# Every quantized linear then has in_features a multiple of 16 (the NVFP4 block).
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "expert_ffn_hidden_size": 32,
    "ffn_hidden_size": 128,
    "head_dim": 16,
    "global_head_dim": 32,
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 16,
    "v_head_dim": 16,
    "max_position_embeddings": 256,
    "sliding_window": 16,
    "vocab_size": 128,
    "vocab_size_per_layer_input": 128,
}
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "moe_k")
ZERO_EXPERT_KEYS = ("zero_expert_num",)
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
DROP_KEYS = ("quantization_config", "auto_map", "_name_or_path", "transformers_version")
# A repo id here makes transformers download code (auto_map) or kernels (`attn_implementation=
# "org/repo"`, same for experts); a twin uses the native classes' defaults.
HUB_KEYS = ("auto_map", "custom_pipelines", "attn_implementation", "_attn_implementation",
            "experts_implementation", "_experts_implementation")
# Width keys that size weights: when config.json leaves one out, the class default (often the
# full model's width, e.g. hidden_size=4096) would be used, so it is filled in and shrunk.
FILL_FROM_DEFAULTS = ("hidden_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                      "expert_ffn_hidden_size", "ffn_hidden_size", "q_lora_rank", "kv_lora_rank",
                      "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "vocab_size", "num_attention_heads")
# ``widths="runtime"``: the smallest widths a real runtime's kernels take. vLLM's Marlin NVFP4
# kernels need every linear's in_features % 128 == 0 and out_features % 64 == 0 (marlin_utils.py:
# GPTQ_MARLIN_MIN_THREAD_K / _N) and a fused MoE's hidden % 128 == 0, intermediate % 64 == 0
# (check_moe_marlin_supports_layer); with 4 heads of 64 and 2 KV heads every projection fits.
RUNTIME = {
    **TINY,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "expert_ffn_hidden_size": 128,
    "ffn_hidden_size": 512,
    "head_dim": 64,
    "global_head_dim": 128,
    "q_lora_rank": 128,
    "kv_lora_rank": 256,  # vLLM's MLA backends take kv_lora_rank + qk_rope_head_dim in {320, 576}
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 64,
    "v_head_dim": 64,
    "max_position_embeddings": 512,
    "sliding_window": 64,
    "vocab_size": 256,
    "vocab_size_per_layer_input": 256,
}
HEADS = 4
ALIASED = (*TINY, "num_hidden_layers", "num_attention_heads", "num_key_value_heads")  # see ``aliases``
REAL_WIDTHS_VOCAB = 1024
WIDTHS = ("tiny", "runtime", "real")


def text_part(raw: dict) -> dict:
    """The decoder's config: a multimodal config's ``text_config``, else the config itself."""
    return copy.deepcopy(raw.get("text_config") or raw)


def raw_max(raw: dict):
    return text_part(raw).get("max_position_embeddings")


def _first(d: dict, keys) -> str | None:
    return next((k for k in keys if d.get(k) is not None), None)


def _strip_hub_keys(d: dict) -> None:
    for k in HUB_KEYS:
        d.pop(k, None)
    for v in d.values():
        if isinstance(v, dict):
            _strip_hub_keys(v)


def _check_sizes(d: dict) -> None:
    """Every size the shrinker reads is a non-negative integer (or null)."""
    keys = (*TINY, *EXPERT_COUNT_KEYS, *TOP_K_KEYS, "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "num_global_key_value_heads", "first_k_dense_replace", "n_group", "topk_group")
    for k in keys:
        v = d.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{k}={v!r} is not a non-negative integer")


def shrink(raw: dict, *, layers: int | None = 2, num_experts: int | str | None = None,
           top_k: int | None = None, widths: str = "tiny", defaults: dict | None = None,
           aliases: dict | None = None, roles: tuple | None = None, keep: list[int] | None = None) -> dict:
    """A tiny copy of the (text) config dict ``raw`` (``widths="real"``: real widths, see above).

    ``defaults``: the config class's default values, for the width keys ``raw`` leaves out;
    ``aliases``: the class's ``attribute_map`` (usual name -> its name), so its own names shrink too.
    Depth: ``layers`` layers at least, chosen by :func:`.layout.choose_layers` so that the layout
    is covered (``roles``: per real layer, (has an MoE block, has attention), from the built
    model); ``keep``: exactly these layers of the real model; ``layers=None``: the real depth.
    Raises ValueError for a size that is not a non-negative integer.
    """
    if widths not in WIDTHS:
        raise ValueError(f"widths must be one of {WIDTHS}, got {widths!r}")
    if widths == "real":
        return _shrink_real_widths(raw, layers=layers, num_experts=num_experts, top_k=top_k, roles=roles,
                                   keep=keep)
    d = text_part(raw)
    for k in DROP_KEYS:
        d.pop(k, None)
    _strip_hub_keys(d)
    if d.get("use_mamba_kernels"):
        d["use_mamba_kernels"] = False  # CUDA-only kernels (transformers 4.57 refuses to run without them)
    aliases, defaults = aliases or {}, defaults or {}
    nested = [(v, defaults.get(k)) for k, v in d.items() if isinstance(v, dict)]  # dbrx: ffn_config
    for sub, sub_defaults, names in ((d, defaults, aliases), *((v, dv, {}) for v, dv in nested)):
        for k in FILL_FROM_DEFAULTS if isinstance(sub_defaults, dict) else ():
            name = names.get(k, k)
            if name not in sub and sub_defaults.get(name) is not None:
                sub[name] = sub_defaults[name]
    # the class's own names for the usual keys (dbrx: d_model, n_layers; gpt2: n_embd): shrunk as those
    renamed = {k: a for k, a in aliases.items() if k in ALIASED and a in d and k not in d}
    for k, a in renamed.items():
        d[k] = d.pop(a)
    _check_sizes(d)
    rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
    table = RUNTIME if widths == "runtime" else TINY
    for sub in (d, *(v for v in d.values() if isinstance(v, dict))):  # and one level down (dbrx: ffn_config)
        for k, v in table.items():
            if sub.get(k) is not None:
                sub[k] = v
    if isinstance(rope, dict) and "original_max_position_embeddings" in rope:
        d["max_position_embeddings"] = raw_max(raw)  # YaRN checks it against its original length
    if d.get("hidden_size_per_layer_input"):
        d["hidden_size_per_layer_input"] = 16

    heads, kv = d.get("num_attention_heads"), d.get("num_key_value_heads")
    if heads:
        d["num_attention_heads"] = HEADS
        if kv:
            d["num_key_value_heads"] = HEADS if kv == heads else 2  # keep MHA vs GQA
        if d.get("num_global_key_value_heads"):
            d["num_global_key_value_heads"] = 1 if d["num_global_key_value_heads"] < (kv or heads) else 2
    if d.get("head_dim") is None and d.get("hidden_size") and heads:
        d["head_dim"] = d["hidden_size"] // HEADS
    for sub in (d, *(v for v in d.values() if isinstance(v, dict))):
        _bound_other_widths(sub, table)
    _mamba_heads(d)

    _shrink_experts(d, num_experts, top_k)
    _shrink_depth(d, layers, roles, keep)
    _clip_token_ids(d, d.get("vocab_size", TINY["vocab_size"]))
    for k, a in renamed.items():
        d[a] = d.pop(k)
    _derived(d)
    return d


# Width keys the tables above do not name (every width a transformers MoE config uses is one of
# these shapes): bounded to the table's value of the same kind. Names with _NOT_WIDTH words size
# no weight (chunk_size, sliding_window_size, conv_L_cache, ...) or are counts handled elsewhere.
_WIDTH_KINDS = (  # (name pattern, the table key whose value bounds it)
    (r"(expert|moe|shared).*intermediate|intermediate.*(expert|moe|shared)|expert.*ffn", "moe_intermediate_size"),
    (r"intermediate|ffn|mlp_hidden|_inner", "intermediate_size"),
    (r"_rank$", "q_lora_rank"),
    (r"(head_dim|d_head|head_size|_dim)$", "head_dim"),
    (r"(state_size|d_state)$", "head_dim"),
    (r"(hidden_size|d_model|n_embd|_width|embed_dim)$", "hidden_size"),
    (r"(_heads|n_head)(_per_layer)?$", None),  # head counts: HEADS
)
_NOT_WIDTH = re.compile(r"token|theta|position|window|chunk|kernel|conv|seq|batch|cache|bucket|vocab|block|"
                        r"group|step|patch|image|vision|audio|max_|min_|num_experts|n_routed|top_k|topk|"
                        r"per_layer_input")


def _bound_other_widths(sub: dict, table: dict) -> None:
    for k, v in list(sub.items()):
        if k in table or k in ALIASED or _NOT_WIDTH.search(k):
            continue
        kind = next((t for pat, t in _WIDTH_KINDS if re.search(pat, k)), False)
        if kind is False:
            continue
        bound = HEADS if kind is None else table[kind]
        if isinstance(v, int) and not isinstance(v, bool) and v > bound:
            sub[k] = bound
        elif kind is None and isinstance(v, list) and v and all(isinstance(x, int) and x > 0 for x in v):
            top = max(v)  # per-layer head counts (Laguna): the same proportions, at most HEADS, even
            sub[k] = [max(2, HEADS * x // top // 2 * 2) for x in v] if top > HEADS else v


# Mamba-2 mixers (NemotronH, GraniteMoeHybrid): heads x head dim must equal expand x hidden size,
# and the groups must divide the heads.
_MAMBA = (("mamba_num_heads", "mamba_head_dim", "expand", "n_groups"),
          ("mamba_n_heads", "mamba_d_head", "mamba_expand", "mamba_n_groups"))


def _mamba_heads(d: dict) -> None:
    hidden = d.get("hidden_size")
    for heads, dim, expand, groups in _MAMBA:
        if not all(isinstance(d.get(k), int) for k in (heads, dim, expand)) or not isinstance(hidden, int):
            continue
        d[heads] = max(1, d[expand] * hidden // d[dim])
        g = d.get(groups)
        if isinstance(g, int) and g > 0 and d[heads] % g:
            d[groups] = math.gcd(d[heads], g)


def _shrink_real_widths(raw: dict, *, layers, num_experts, top_k, roles=None, keep=None) -> dict:
    d = text_part(raw)
    for k in DROP_KEYS:
        d.pop(k, None)
    _strip_hub_keys(d)
    _check_sizes(d)
    for k in ("vocab_size", "vocab_size_per_layer_input"):
        if d.get(k) is not None:
            d[k] = min(d[k], REAL_WIDTHS_VOCAB)
    _shrink_experts(d, num_experts, top_k)
    _shrink_depth(d, layers, roles, keep)
    _clip_token_ids(d, d.get("vocab_size", REAL_WIDTHS_VOCAB))
    return d


def _clip_token_ids(d: dict, vocab: int) -> None:
    for k in TOKEN_ID_KEYS:
        v = d.get(k)
        if isinstance(v, int) and v >= vocab:
            d[k] = vocab - 1
        elif isinstance(v, list):
            d[k] = [min(t, vocab - 1) for t in v]


def _shrink_experts(d: dict, num_experts, top_k) -> None:
    ek, kk = _first(d, EXPERT_COUNT_KEYS), _first(d, TOP_K_KEYS)
    if ek is None:
        return
    real, k = d[ek], (d[kk] if kk else 1)
    if kk is None and (kk := next((t for t in TOP_K_KEYS if t in d), None)):
        k = min(2, real)  # the key is there but null (DeepSeek-V2's class default): a twin routes top-2
    if top_k is not None:
        k = top_k
    if num_experts == "real":
        n = real
    elif num_experts is None:
        n = min(real, max(4, 2 * k))
    else:
        n = int(num_experts)
    if k > n:
        raise ValueError(f"top-k {k} is larger than the number of experts {n}")
    d[ek] = n
    if kk:
        d[kk] = k
    for z in ZERO_EXPERT_KEYS:  # identity ("zero") experts beside the routed ones (LongCat-Flash)
        if isinstance(d.get(z), int) and d[z] > n:
            d[z] = n
    # group-limited routing (DeepSeek-V3): keep it where the expert count allows
    if d.get("n_group"):
        if n % d["n_group"] or n // d["n_group"] < 2:
            d["n_group"] = 2 if n % 2 == 0 and n >= 4 else 1
        groups = d["n_group"]
        per_group = n // groups
        tg = min(d.get("topk_group") or groups, groups)
        while tg * per_group < k:
            tg += 1
        d["topk_group"] = tg


def _shrink_depth(d: dict, layers, roles=None, keep=None) -> None:
    if keep is None:
        if layers is None:
            return
        moe, attention = roles or (None, None)
        keep = choose_layers(d, layers, moe=moe, attention=attention)
    cut(d, keep)


def _derived(d: dict) -> None:
    """Keys that other keys determine, recomputed from the shrunk ones."""
    if d.get("qk_head_dim") is not None and d.get("qk_nope_head_dim") is not None:
        d["qk_head_dim"] = d["qk_nope_head_dim"] + (d.get("qk_rope_head_dim") or 0)
