"""End to end: a failed export never loses the calibration (patch 0007, issue 7).

Failure injection on the tiny twins, one body for CPU and CUDA, over NVFP4_DEFAULT_CFG and
NVFP4_AWQ_LITE_CFG (AWQ adds pre_quant_scale and weights smoothed in place):
(1) the export fails: the same exception comes out, with a note naming the rescue file and the
    resume call, and the export directory holds the rescue file and nothing that looks like a
    checkpoint;
(2) resume_from_rescue on a freshly built twin (same seed), export again: the checkpoint is
    identical, tensor by tensor and in config.json / hf_quant_config.json, to a direct export
    of the calibrated model.
Also with accelerate offload (weights on the meta device, held by hooks; a decoder layer on
"disk"). On the fork today, AWQ export of an offloaded model fails for real (fuse_prequant_to_linear
multiplies an offloaded meta weight); the injected error makes the failure independent of it.
On pristine 0.47.0 and on the series without 0007 there is no rescue file and the partial
checkpoint stays behind.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from _utils.configs import quant_config
from _utils.devices import DEVICES
from _utils.tiny_moe import ARCHS, build, calib_ids
from modelopt_fork.checkpoint.load import load_tensors

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"]
RESCUE = "modelopt_calibration_rescue.pt"
MESSAGE = "injected export failure after the weights were written"

needs_notes = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python >= 3.11")


class InjectedExportError(RuntimeError):
    pass


def _raise(*args, **kwargs):
    raise InjectedExportError(MESSAGE)


def _calibrate(model, cfg, device):
    import modelopt.torch.quantization as mtq

    ids = calib_ids(seed=11).to(device)
    mtq.quantize(model, quant_config(cfg), lambda m: m(ids))
    return model


def _offloaded(arch, device, offload_dir):
    """The twin dispatched by accelerate: layer 0 on "cpu" (offloaded when the main device is a
    GPU), layer 1 on "disk" (its weights on meta, read back through the hook), the rest on device."""
    from accelerate import dispatch_model

    model = build(arch, seed=11, device="cpu")
    main = 0 if device == "cuda" else "cpu"
    device_map = {f"model.{name}": main for name, _ in model.model.named_children() if name != "layers"}
    device_map.update({"model.layers.0": "cpu", "model.layers.1": "disk", "lm_head": main})
    return dispatch_model(model, device_map=device_map, offload_dir=str(offload_dir))


def _failing_export(model, out, monkeypatch):
    """Export with an error injected once config.json and the weights are on disk (both the
    resident and the streaming/offloaded path), or earlier if export fails by itself."""
    import modelopt.torch.export.unified_export_hf as resident
    import modelopt.torch.export.unified_export_hf_streaming as streaming
    from modelopt.torch.export import export_hf_checkpoint

    with monkeypatch.context() as m:
        m.setattr(resident, "_write_hf_export_config", _raise)
        m.setattr(streaming, "_sanitize_generation_config_for_save", _raise)
        with pytest.raises(Exception) as info:
            export_hf_checkpoint(model, export_dir=out)
    return info.value


def _check_failure(err, out, *, injected=True):
    if injected:
        assert type(err) is InjectedExportError and str(err) == MESSAGE, repr(err)
        tb = err.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert tb.tb_frame.f_code.co_name == "_raise", "the original traceback was replaced"
    rescue = out / RESCUE
    assert rescue.is_file(), f"no rescue file in {out}: {sorted(p.name for p in out.iterdir())}"
    if sys.version_info >= (3, 11):
        note = "\n".join(getattr(err, "__notes__", []))
        assert str(rescue) in note and f"resume_from_rescue(model, {str(rescue)!r})" in note, note
    left = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".json", ".pth", ".bin"))
    assert left == [], f"the failed export left checkpoint files behind: {left}"
    return rescue


def _export(model, out):
    from modelopt.torch.export import export_hf_checkpoint

    export_hf_checkpoint(model, export_dir=out)
    assert not (out / RESCUE).exists(), "rescue file left after a successful export"


def _assert_identical_checkpoints(direct, resumed):
    a, b = load_tensors(direct), load_tensors(resumed)
    assert a and a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    for key in a:
        assert (a[key].dtype, a[key].shape) == (b[key].dtype, b[key].shape), key
        # bit-identical: the resumed export runs the same deterministic export code on the same state
        assert torch.equal(a[key].flatten().view(torch.uint8), b[key].flatten().view(torch.uint8)), key
    for name in ("config.json", "hf_quant_config.json"):
        assert json.loads((direct / name).read_text()) == json.loads((resumed / name).read_text()), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_rescue_then_resume_matches_direct_export(arch, cfg, device, tmp_path, monkeypatch):
    from modelopt.torch.export import resume_from_rescue

    model = _calibrate(build(arch, seed=11, device=device), cfg, device)
    reference = copy.deepcopy(model)  # the calibrated state, untouched by the failed export
    out = tmp_path / "ckpt"

    rescue = _check_failure(_failing_export(model, out, monkeypatch), out)

    _export(reference, tmp_path / "direct")
    resumed = resume_from_rescue(build(arch, seed=11, device=device), rescue)
    _export(resumed, out)
    _assert_identical_checkpoints(tmp_path / "direct", out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_offloaded_rescue_then_resume_matches_direct_export(arch, device, tmp_path, monkeypatch):
    """Calibrated while offloaded, resumed onto a fresh offloaded twin, exported by the streaming
    path. The reference is a second, independent calibration of the same offloaded twin: max
    calibration over the same inputs is deterministic."""
    from modelopt.torch.export import resume_from_rescue

    model = _calibrate(_offloaded(arch, device, tmp_path / "off1"), "NVFP4_DEFAULT_CFG", device)
    assert model.model.layers[1].self_attn.q_proj.weight.is_meta
    out = tmp_path / "ckpt"

    rescue = _check_failure(_failing_export(model, out, monkeypatch), out)

    _export(_calibrate(_offloaded(arch, device, tmp_path / "off2"), "NVFP4_DEFAULT_CFG", device), tmp_path / "direct")
    resumed = resume_from_rescue(_offloaded(arch, device, tmp_path / "off3"), rescue)
    assert not any(t.is_meta for n, t in resumed.named_buffers() if "quantizer" in n), "amax left on meta"
    _export(resumed, out)
    _assert_identical_checkpoints(tmp_path / "direct", out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_offloaded_awq_rescue_resumes_on_resident_model(arch, device, tmp_path, monkeypatch):
    """AWQ calibrated while offloaded: the rescue holds the smoothed weights read back from the
    offload hooks (not meta placeholders); resumed onto a resident twin, the export equals a
    direct export of the twin calibrated resident (same computation, same inputs)."""
    from modelopt.torch.export import resume_from_rescue

    # Offloaded (meta) weights cannot take the AWQ fold, so the offloaded model keeps its scales
    # (fold_awq_pre_quant_scale warns); the resident twin is calibrated in the same form.
    cfg = quant_config("NVFP4_AWQ_LITE_CFG", fold_pre_quant_scale=False)
    model = _calibrate(_offloaded(arch, device, tmp_path / "off"), cfg, device)
    out = tmp_path / "ckpt"
    err = _failing_export(model, out, monkeypatch)
    rescue = _check_failure(err, out, injected=isinstance(err, InjectedExportError))
    weights = torch.load(rescue, weights_only=False)["modelopt_calibrated_weights"]
    assert "model.layers.1.self_attn.q_proj.weight" in weights
    assert not any(v.is_meta for v in weights.values())

    _export(_calibrate(build(arch, seed=11, device=device), cfg, device), tmp_path / "direct")
    resumed = resume_from_rescue(build(arch, seed=11, device=device), rescue)
    _export(resumed, out)
    _assert_identical_checkpoints(tmp_path / "direct", out)


@pytest.mark.parametrize("device", DEVICES)
def test_no_rescue_anywhere_stops_export_before_the_model_changes(device, tmp_path, monkeypatch):
    """The rescue can be written nowhere (disk full): export refuses before it changes the model
    in place, so the calibration is not lost (before: export went on, changed the model, then
    failed; most quantizer tensors were gone)."""
    import modelopt.torch.export.calibration_rescue as calibration_rescue
    from modelopt.torch.export import export_hf_checkpoint

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = _calibrate(build(ARCHS[0], seed=11, device=device), "NVFP4_DEFAULT_CFG", device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(calibration_rescue.torch, "save", disk_full)
    with pytest.raises(RuntimeError, match="export stops before changing the model"):
        export_hf_checkpoint(model, export_dir=tmp_path)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_notes
@pytest.mark.parametrize("device", DEVICES)
def test_read_only_export_dir_rescues_to_a_temporary_directory(device, tmp_path, monkeypatch):
    """The export directory takes no rescue file (read-only or full): it goes to a new temporary
    directory, the warning and the export error's note say where, and it resumes."""
    import modelopt.torch.export.calibration_rescue as calibration_rescue
    from modelopt.torch.export import resume_from_rescue

    out = tmp_path / "ckpt"
    out.mkdir()
    mkstemp = calibration_rescue.tempfile.mkstemp

    def read_only(*args, **kwargs):  # root ignores file modes: refuse creating files in `out`
        if str(kwargs.get("dir")) == str(out):
            raise OSError(30, "Read-only file system")
        return mkstemp(*args, **kwargs)

    model = _calibrate(build(ARCHS[0], seed=11, device=device), "NVFP4_DEFAULT_CFG", device)
    reference = copy.deepcopy(model)  # the failed export changes `model` in place
    monkeypatch.setattr(calibration_rescue.tempfile, "mkstemp", read_only)
    with pytest.warns(UserWarning, match="saved it to .*modelopt-rescue-"):
        err = _failing_export(model, out, monkeypatch)
    assert type(err) is InjectedExportError and str(err) == MESSAGE
    note = "\n".join(err.__notes__)
    rescue = next(Path(w) for w in note.split("'") if w.endswith(RESCUE))
    assert rescue.is_file() and rescue.parent.name.startswith("modelopt-rescue-") and rescue.parent != out
    monkeypatch.undo()
    direct = tmp_path / "direct"
    _export(reference, direct)
    resumed = tmp_path / "resumed"
    _export(resume_from_rescue(build(ARCHS[0], seed=11, device=device), rescue), resumed)
    _assert_identical_checkpoints(direct, resumed)
