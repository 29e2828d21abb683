"""A config's layer layout, and a consistent cut of it to a twin's depth.

A decoder's layers differ by what their config says about each of them, in three ways:

* per-layer lists (or pattern strings): every list/string value whose length is the depth
  (``layer_types``, ``mlp_layer_types``, ``layers_block_type``, ``num_attention_heads_per_layer``,
  ``no_rope_layers``, ``hybrid_override_pattern``, ...), found by their length, not their name;
* layer-index lists: ``mlp_only_layers``, ``moe_layers`` (ints below the depth);
* counts and indices of layers: ``first_k_dense_replace``, ``num_dense_layers``,
  ``moe_layer_start_index``, ``max_window_layers``, ... (``COUNT_BELOW``) and periodic keys
  (``decoder_sparse_step``, ``expert_layer_period``/``_offset``, ``attn_layer_period``/``_offset``)
  that the model evaluates on the layer index.

A cut keeps a sorted set of the real model's layer indices: the lists are subset, the index
lists renumbered, the counts become "how many kept layers lie below". Periodic keys stay
right only when the kept layers are a prefix; the builder (``build.twin_config``) checks the
twin's layers against the real model's and falls back to a prefix when they differ.

:func:`choose_layers` picks the kept set: layers in index order, each one kept when it shows
something no kept layer shows yet (a value of a per-layer list, an MoE vs dense MLP, an
attention vs linear-attention/SSM layer, a layer of the dense prefix), then padded with the
following layers to the requested depth. So a dense-first MoE keeps one dense layer then MoE
layers, a hybrid keeps an attention layer, a sliding/full pattern keeps both kinds.
"""

from __future__ import annotations

DEPTH_KEYS = ("num_hidden_layers", "num_layers", "n_layers")
# integer layer indices of some kind of layer
INDEX_LIST_KEYS = ("mlp_only_layers", "moe_layers", "dense_layers", "sparse_layers", "attn_layer_indices",
                   "full_attn_idxs", "swa_layers", "global_layers")
# "the first v layers are ..." / "layers from index v": after a cut, the count of kept layers below v
COUNT_BELOW = ("first_k_dense_replace", "num_dense_layers", "n_dense_layers", "moe_layer_start_index",
               "max_window_layers", "num_dense_first_layers", "dense_replace")
# "up to layer v" (inclusive): after a cut, the index of the last kept layer at or below v
LAST_INDEX = ("moe_layer_end_index",)
# layers outside the decoder stack (multi-token prediction, KV-shared tail): none in a twin
ZERO_KEYS = ("num_nextn_predict_layers", "num_kv_shared_layers")
NOT_PER_LAYER = ("architectures", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                 "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                 "mrope_section", "time_step_limit", "mtp_layers_block_type")  # lists that may match a small depth
# a per-layer list with more distinct values than this (per-layer thetas, say) is cut, not covered
MAX_COVERED_VALUES = 4
# a twin keeps at most this many layers to cover a layout (more is an error naming the layout)
MAX_TWIN_LAYERS = 8


def is_attention(kind) -> bool:
    """Whether a layer type (``layer_types`` / ``layers_block_type`` value) holds softmax attention."""
    if not isinstance(kind, str):
        return True
    k = kind.lower()
    if k.startswith("hybrid"):
        return True  # linear attention and full attention in one layer (Zaya, Inkling)
    return ("attention" in k or k in ("attn", "*")) and not k.startswith("linear")


def depth(d: dict) -> int | None:
    """The number of decoder layers ``d`` describes (None: it does not say)."""
    n = d.get("num_hidden_layers")
    if isinstance(n, int) and not isinstance(n, bool):
        nl = d.get("num_layers")
        if isinstance(nl, int) and nl and n != nl and n % nl == 0:
            return nl  # LongCat-Flash: num_layers decoder layers of n // num_layers sublayers each
        return n
    for k in ("n_layers", "num_layers"):
        if isinstance(d.get(k), int) and not isinstance(d.get(k), bool):
            return d[k]
    for k in ("layers_block_type", "layer_types", "hybrid_override_pattern"):  # NemotronH: depth = len(list)
        if isinstance(d.get(k), (list, str)) and d[k]:
            return len(d[k])
    return None


def per_layer_keys(d: dict, n: int) -> list[str]:
    """Keys of ``d`` whose value has one entry per layer."""
    out = []
    for k, v in d.items():
        if k in NOT_PER_LAYER or k in INDEX_LIST_KEYS or not n:
            continue
        if (isinstance(v, list) or (isinstance(v, str) and k.endswith("pattern"))) and len(v) == n:
            out.append(k)
    return out


def index_list_keys(d: dict, n: int) -> list[str]:
    def is_index_list(k, v):
        return (isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
                and (k in INDEX_LIST_KEYS or (k.endswith("_layers") and len(set(v)) == len(v)
                                              and v == sorted(v) and len(v) < n and any(i > 1 for i in v))))
    return [k for k, v in d.items() if k not in NOT_PER_LAYER and is_index_list(k, v)]


def layer_atoms(d: dict, n: int, moe=None, attention=None) -> list[set]:
    """For each layer: the set of (what, value) facts a twin should cover."""
    lists = [k for k in per_layer_keys(d, n) if len({repr(x) for x in d[k]}) <= MAX_COVERED_VALUES]
    atoms = [set() for _ in range(n)]
    for i in range(n):
        for k in lists:
            atoms[i].add((k, repr(d[k][i])))
        for k in COUNT_BELOW:
            v = d.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and 0 < v < n:
                atoms[i].add((k, i < v))
        for k in index_list_keys(d, n):
            atoms[i].add((k, i in d[k]))
        if moe is not None:
            atoms[i].add(("moe", bool(moe[i])))
        if attention is not None:
            atoms[i].add(("attention", bool(attention[i])))
    return atoms


def choose_layers(d: dict, layers: int, *, moe=None, attention=None) -> list[int]:
    """Sorted indices of the real model's layers that a twin of ``layers`` layers (at least) keeps.

    ``moe`` / ``attention``: per layer, whether it has an MoE block / softmax attention (from the
    built model, see ``build.layer_roles``); without them only what ``d`` says is covered.
    Raises ValueError when covering the layout takes more than MAX_TWIN_LAYERS layers.
    """
    n = depth(d)
    if not n:
        return list(range(layers))
    atoms = layer_atoms(d, n, moe, attention)
    seen: set = set()
    keep = []
    for i in range(n):
        if atoms[i] - seen:
            keep.append(i)
            seen |= atoms[i]
    keep = keep or [0]
    if len(keep) > max(layers, MAX_TWIN_LAYERS):
        what = sorted({a[0] for a in seen})
        raise ValueError(f"the layer layout ({', '.join(what)}) takes {len(keep)} layers to cover "
                         f"(layers {keep}), more than {MAX_TWIN_LAYERS}")
    # pad: the layers after the last kept one first (a dense prefix stays one layer), then before
    rest = [i for i in range(keep[-1] + 1, n)] + [i for i in range(keep[-1]) if i not in keep]
    keep = sorted(keep + rest[:max(0, min(layers, n) - len(keep))])
    return keep


def cut(d: dict, keep: list[int]) -> None:
    """Cut ``d`` (in place) to the layers ``keep`` of the real model (sorted indices)."""
    n = depth(d)
    if n is None:
        return
    new = {old: i for i, old in enumerate(keep)}
    for k in per_layer_keys(d, n):
        v = d[k]
        d[k] = "".join(v[i] for i in keep) if isinstance(v, str) else [v[i] for i in keep]
    for k in index_list_keys(d, n):
        d[k] = [new[i] for i in d[k] if i in new]
    for k in COUNT_BELOW:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            d[k] = sum(1 for i in keep if i < v)
    for k in LAST_INDEX:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            below = [new[i] for i in keep if i <= v]
            d[k] = below[-1] if below else 0
    for k in ZERO_KEYS:
        if isinstance(d.get(k), int) and d[k] > 0:
            d[k] = 0
    L = len(keep)
    nh, nl = d.get("num_hidden_layers"), d.get("num_layers")
    if isinstance(nh, int) and isinstance(nl, int) and nl and nh != nl and nh % nl == 0:
        d["num_hidden_layers"], d["num_layers"] = L * (nh // nl), L
        return
    for k in DEPTH_KEYS:
        if isinstance(d.get(k), int) and not isinstance(d.get(k), bool):
            d[k] = L
    if "num_hidden_layers" not in d and not any(k in d for k in DEPTH_KEYS):
        return  # depth is the per-layer lists' length (NemotronH)


def layout_keys(d: dict) -> list[str]:
    """The keys that describe the layer layout (for error messages)."""
    n = depth(d) or 0
    periodic = [k for k in d if any(w in k for w in ("period", "offset", "sparse_step", "interval", "every_n",
                                                        "freq", "interleave"))]
    return sorted({*per_layer_keys(d, n), *index_list_keys(d, n), *(k for k in COUNT_BELOW if k in d), *periodic})
