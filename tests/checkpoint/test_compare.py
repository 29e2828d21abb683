"""compare_checkpoints: an exported checkpoint against a copy with one change of each kind."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from _utils.tiny_moe import ARCHS
from modelopt_fork.checkpoint.compare import compare_checkpoints, compare_tensors

from .conftest import copy_checkpoint


def _rewrite(ckpt, change):
    """Apply ``change(tensors)`` to the single shard of ``ckpt`` (a twin export has one)."""
    (shard,) = sorted(ckpt.glob("*.safetensors"))
    tensors = load_file(shard)
    change(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def _packed_expert_weight(tensors):
    return next(
        k for k, v in sorted(tensors.items()) if ".experts." in k and k.endswith(".weight") and v.dtype == torch.uint8
    )


@pytest.fixture(params=ARCHS)
def ckpt(request, exported, tmp_path):
    return copy_checkpoint(exported(request.param, "NVFP4_DEFAULT_CFG").path, tmp_path / "a")


def test_a_copy_is_identical(ckpt, tmp_path):
    other = copy_checkpoint(ckpt, tmp_path / "b")
    d = compare_checkpoints(ckpt, other)
    assert d.identical, d.summary()
    assert d.tensors > 0 and d.first is None


def test_one_byte_of_one_packed_weight(ckpt, tmp_path):
    other = copy_checkpoint(ckpt, tmp_path / "b")
    seen = {}

    def flip(t):
        k = seen["key"] = _packed_expert_weight(t)
        w = t[k].clone()
        seen["old"] = int(w.view(-1)[7])
        w.view(-1)[7] ^= 0x21
        t[k] = w

    _rewrite(other, flip)
    d = compare_checkpoints(ckpt, other)
    assert not d.identical
    assert [x.name for x in d.differing] == [seen["key"]]
    assert d.first.reason == "values" and d.first.differing == 1
    assert d.first.max_abs_diff == abs(seen["old"] - (seen["old"] ^ 0x21))
    assert seen["key"] in d.summary()


def test_missing_extra_and_dtype(ckpt, tmp_path):
    other = copy_checkpoint(ckpt, tmp_path / "b")

    def change(t):
        k = _packed_expert_weight(t)
        t["extra.fused.gate_up_proj"] = torch.ones(2, 3)
        del t[k.replace(".weight", ".weight_scale_2")]
        scale = k.replace(".weight", ".input_scale")
        t[scale] = t[scale].double()

    _rewrite(other, change)
    d = compare_checkpoints(ckpt, other)
    assert d.only_in_other == ["extra.fused.gate_up_proj"]
    assert len(d.only_in_reference) == 1 and d.only_in_reference[0].endswith(".weight_scale_2")
    assert [(x.reason, x.name.endswith(".input_scale")) for x in d.differing] == [("dtype", True)]


def test_negative_zero_counts_as_a_difference():
    a = torch.tensor([0.0, 1.5, -2.0])
    b = torch.tensor([-0.0, 1.5, -2.0])
    assert torch.equal(a, b)  # torch.equal would call them equal ...
    d = compare_tensors("x", a, b)
    assert d is not None and d.differing == 1 and d.max_abs_diff == 0.0  # ... the bytes are not
    assert compare_tensors("x", a, a.clone()) is None
    fp8 = torch.tensor([0.5, 448.0]).to(torch.float8_e4m3fn)
    d = compare_tensors("s", fp8, torch.tensor([0.5, 416.0]).to(torch.float8_e4m3fn))
    assert d.differing == 1 and d.max_abs_diff == 32.0


def test_quant_config_difference_is_located(ckpt, tmp_path):
    other = copy_checkpoint(ckpt, tmp_path / "b")
    path = other / "hf_quant_config.json"
    q = json.loads(path.read_text())
    q["quantization"]["group_size"] = 32
    path.write_text(json.dumps(q))
    d = compare_checkpoints(ckpt, other)
    assert not d.identical and not d.differing
    assert d.quant_config_detail.startswith("/quantization/group_size: 16 vs 32"), d.quant_config_detail
