"""The twin's layer layout (modelopt_fork/twin/layout.py) on config dicts: no model is built."""

from __future__ import annotations

import pytest

from modelopt_fork.twin.layout import MAX_TWIN_LAYERS, choose_layers, cut, depth, layout_keys


def _dsa_like(n=12, k=3):
    """A DeepSeek-V3.2 / GLM-MoE-DSA-like layout: k dense layers, per-layer lists, an index list."""
    return {"num_hidden_layers": n, "first_k_dense_replace": k,
            "mlp_layer_types": ["dense"] * k + ["sparse"] * (n - k),
            "layer_types": ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)],
            "indexer_types": ["full"] * n, "mlp_only_layers": [k + 2], "eos_token_id": list(range(n))}


def test_cut_keeps_lists_counts_and_indices_consistent():
    d = _dsa_like()
    keep = choose_layers(d, 2)
    # layer 0 (dense, sliding), layer 3 (first sparse, full attention), 5 (the mlp-only layer)
    assert keep == [0, 3, 5]
    cut(d, keep)
    assert d["num_hidden_layers"] == 3
    assert d["first_k_dense_replace"] == 1
    assert d["mlp_layer_types"] == ["dense", "sparse", "sparse"]
    assert d["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert d["indexer_types"] == ["full"] * 3
    assert d["mlp_only_layers"] == [2]  # renumbered: real layer 5 is the twin's layer 2
    assert d["eos_token_id"] == list(range(12))  # token ids are no per-layer list


def test_padding_follows_the_last_kept_layer():
    # asked for 4 layers: the dense prefix stays one layer, the padding comes after the kept ones
    d = {"num_hidden_layers": 10, "first_k_dense_replace": 3}
    keep = choose_layers(d, 4)
    assert keep == [0, 3, 4, 5]
    cut(d, keep)
    assert d == {"num_hidden_layers": 4, "first_k_dense_replace": 1}


def test_roles_from_the_built_model_are_covered():
    # a hybrid whose only attention layer is the 7th: the twin keeps it
    n = 8
    moe = [i % 2 == 1 for i in range(n)]
    attention = [i == 6 for i in range(n)]
    assert choose_layers({"num_hidden_layers": n}, 2, moe=moe, attention=attention) == [0, 1, 6]


def test_last_index_and_zero_keys():
    d = {"num_hidden_layers": 28, "moe_layer_start_index": 1, "moe_layer_end_index": 27,
         "num_nextn_predict_layers": 1}
    cut(d, choose_layers(d, 2))
    assert d == {"num_hidden_layers": 2, "moe_layer_start_index": 1, "moe_layer_end_index": 1,
                 "num_nextn_predict_layers": 0}


def test_depth_from_the_block_list_and_longcat_sublayers():
    assert depth({"layers_block_type": ["linear_attention", "moe", "full_attention", "mlp"]}) == 4
    d = {"num_hidden_layers": 56, "num_layers": 28}  # LongCat-Flash: 28 layers of 2 sublayers
    assert depth(d) == 28
    cut(d, [0, 1])
    assert d == {"num_hidden_layers": 4, "num_layers": 2}
    p = {"hybrid_override_pattern": "M-M*-E"}
    cut(p, [0, 3, 5])
    assert p == {"hybrid_override_pattern": "M*E"}


def test_a_layout_too_long_to_cover_is_a_clear_error():
    # three per-layer lists, each changing value at other layers: 10 layers show something new
    n = 16
    d = {"num_hidden_layers": n, "layer_types": [f"t{min(i, 3)}" for i in range(n)],
         "mlp_layer_types": [f"m{min(max(i - 4, 0), 3)}" for i in range(n)],
         "indexer_types": [f"x{min(max(i - 8, 0), 3)}" for i in range(n)]}
    assert MAX_TWIN_LAYERS < 10
    with pytest.raises(ValueError, match=r"layer layout \(indexer_types, layer_types, mlp_layer_types\) takes 10 "):
        choose_layers(d, 2)
    # asking for that many layers is no error
    assert len(choose_layers(d, 10)) == 10


def test_layout_keys_name_periodic_keys():
    d = {"num_hidden_layers": 32, "attn_layer_period": 8, "attn_layer_offset": 4, "expert_layer_period": 2}
    assert layout_keys(d) == ["attn_layer_offset", "attn_layer_period", "expert_layer_period"]
