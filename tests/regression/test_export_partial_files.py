"""End to end: a failed export leaves the export directory as it was before it (patch 0007).

Failure injected once the weights are on disk, on the resident path (save_pretrained, then
_write_hf_export_config) and on the streaming path of an accelerate-offloaded twin (shards, then
the config files):
(1) into a directory holding no checkpoint: the same exception comes out, and no file that makes
    the directory look like a checkpoint stays behind; other files (a model card) stay;
(2) into a directory holding an earlier (sharded) export: every file is back, byte for byte, and
    the note on the exception says what was removed and what was put back.
On pristine 0.47.0 and on the series without 0007 the partial checkpoint stays behind, and a
re-export that fails has already replaced the earlier config.json and shards.
"""

from __future__ import annotations

import hashlib
import sys

import pytest

from _utils.devices import DEVICES
from _utils.tiny_moe import ARCHS, build, calib_ids

MESSAGE = "injected export failure after the weights were written"
PATHS = ["resident", "offloaded"]


class InjectedExportError(RuntimeError):
    pass


def _raise(*args, **kwargs):
    raise InjectedExportError(MESSAGE)


def _twin(path, device, offload_dir):
    import modelopt.torch.quantization as mtq
    from accelerate import dispatch_model

    model = build(ARCHS[0], seed=11, device="cpu" if path == "offloaded" else device)
    if path == "offloaded":  # layer 1 on "disk": its weights on meta, the streaming export path
        main = 0 if device == "cuda" else "cpu"
        device_map = {f"model.{n}": main for n, _ in model.model.named_children() if n != "layers"}
        device_map.update({"model.layers.0": main, "model.layers.1": "disk", "lm_head": main})
        model = dispatch_model(model, device_map=device_map, offload_dir=str(offload_dir))
    ids = calib_ids(seed=11).to(device)
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(ids))
    return model


def _failing_export(model, out, monkeypatch):
    import modelopt.torch.export.unified_export_hf as resident
    import modelopt.torch.export.unified_export_hf_streaming as streaming
    from modelopt.torch.export import export_hf_checkpoint

    with monkeypatch.context() as m:
        m.setattr(resident, "_write_hf_export_config", _raise)
        m.setattr(streaming, "_sanitize_generation_config_for_save", _raise)
        with pytest.raises(InjectedExportError) as info:
            export_hf_checkpoint(model, export_dir=out)
    err = info.value
    assert str(err) == MESSAGE
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "_raise", "the original traceback was replaced"
    return "\n".join(getattr(err, "__notes__", []))


def _snapshot(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_failed_export_leaves_no_checkpoint(path, device, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "README.md").write_text("model card")

    note = _failing_export(_twin(path, device, tmp_path / "off"), out, monkeypatch)

    assert sorted(p.name for p in out.iterdir()) == ["README.md"], "the failed export left files behind"
    if sys.version_info >= (3, 11):
        assert f"Removed the checkpoint files the failed export wrote to {out}: " in note, note


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_failed_reexport_restores_the_earlier_checkpoint(path, device, tmp_path, monkeypatch):
    from modelopt.torch.export import export_hf_checkpoint

    out = tmp_path / "ckpt"
    export_hf_checkpoint(_twin(path, device, tmp_path / "off1"), export_dir=out, max_shard_size="20KB")
    (out / "tokenizer.json").write_text("{}")
    before = _snapshot(out)
    assert "model.safetensors.index.json" in before and "config.json" in before

    note = _failing_export(_twin(path, device, tmp_path / "off2"), out, monkeypatch)

    assert _snapshot(out) == before, "the earlier checkpoint was not restored byte for byte"
    if sys.version_info >= (3, 11):
        assert "Put back the files that were there before it: config.json, " in note, note
