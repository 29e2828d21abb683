"""load_tensors: every shard of a checkpoint read, the index honoured, a name in two shards refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from modelopt_fork.checkpoint.load import LoadError, load_tensors


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 8, generator=g), "a.weight_scale": torch.randint(0, 255, (4, 1), generator=g,
                                                                                          dtype=torch.uint8)}


def test_reads_every_shard_bit_for_bit(tmp_path):
    first, second = _tensors(1), {"b.weight": torch.randn(3, 3, generator=torch.Generator().manual_seed(2))}
    save_file(first, tmp_path / "model-00001-of-00002.safetensors")
    save_file(second, tmp_path / "model-00002-of-00002.safetensors")
    got = load_tensors(tmp_path)
    assert got.keys() == first.keys() | second.keys()
    for k, v in {**first, **second}.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_only_the_shards_of_the_index(tmp_path):
    save_file(_tensors(3), tmp_path / "model-00001-of-00001.safetensors")
    save_file({"stale.weight": torch.ones(2)}, tmp_path / "old.safetensors")  # not in the index
    weight_map = {"a.weight": "model-00001-of-00001.safetensors", "a.weight_scale": "model-00001-of-00001.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert sorted(load_tensors(tmp_path)) == ["a.weight", "a.weight_scale"]


def test_a_name_in_two_shards_is_an_error(tmp_path):
    save_file(_tensors(4), tmp_path / "x.safetensors")
    save_file(_tensors(5), tmp_path / "y.safetensors")
    with pytest.raises(LoadError, match="a.weight"):
        load_tensors(tmp_path)


def test_no_shards_is_an_error(tmp_path):
    with pytest.raises(LoadError, match="no \\*.safetensors"):
        load_tensors(tmp_path)
