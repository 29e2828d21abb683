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


@needs_notes
@pytest.mark.parametrize("device", DEVICES)
def test_failing_rescue_keeps_the_export_error(device, tmp_path, monkeypatch):
    """The rescue itself fails (disk full): the export error still comes out unchanged, with a
    note saying the calibration could not be saved."""
    import modelopt.torch.export.calibration_rescue as calibration_rescue

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = _calibrate(build(ARCHS[0], seed=11, device=device), "NVFP4_DEFAULT_CFG", device)
    monkeypatch.setattr(calibration_rescue.torch, "save", disk_full)
    with pytest.warns(UserWarning, match="Could not save the calibration rescue file"):
        err = _failing_export(model, tmp_path, monkeypatch)
    assert type(err) is InjectedExportError and str(err) == MESSAGE
    assert "could not be saved (OSError: [Errno 28] No space left on device)" in "\n".join(err.__notes__)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
