"""End to end: export_hf_checkpoint(save_rescue=True) never loses the calibration (patch 0022).

Failure injection on the tiny twins, one body for CPU and CUDA, over NVFP4_DEFAULT_CFG and
NVFP4_AWQ_LITE_CFG (AWQ adds pre_quant_scale and weights smoothed in place):
(1) the export fails: the same exception comes out, with a note naming the rescue file and the
    resume call, and the export directory holds the rescue file and nothing that looks like a
    checkpoint (0007 removes the partial files);
(2) resume_from_rescue on a freshly built twin (same seed), export again: the checkpoint is
    identical, tensor by tensor and in config.json / hf_quant_config.json, to a direct export
    of the calibrated model.
Also with accelerate offload (weights on the meta device, held by hooks; a decoder layer on
"disk"), with the export directory refusing the file (a temporary directory takes it), with no
place to write it (export stops before changing the model). resume_from_rescue refuses a file
saved from another model (other hidden size, other weights, other configuration, another
architecture) and a corrupt one, each with an error naming the difference, before it changes the
model; the weights are written one module at a time (no copy of the model held). The first
architecture runs in the CPU gate, the others in the slow run. On pristine 0.47.0 and on the
series without 0022 there is no save_rescue, no resume_from_rescue.
"""

from __future__ import annotations

import copy
import gc
import json
import struct
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from _utils.configs import quant_config
from _utils.devices import DEVICES
from _utils.tiny_moe import ARCHS, build, calib_ids, tiny_config
from modelopt_fork.checkpoint.load import load_tensors

CONFIGS = ["NVFP4_DEFAULT_CFG", "NVFP4_AWQ_LITE_CFG"]
RESCUE = "modelopt_calibration.rescue"
MESSAGE = "injected export failure after the weights were written"
# the first architecture in the CPU gate, the others in the slow run
GATED_ARCHS = [pytest.param(a, marks=[pytest.mark.slow] if i else []) for i, a in enumerate(ARCHS)]

needs_notes = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python >= 3.11")


class InjectedExportError(RuntimeError):
    pass


def _raise(*args, **kwargs):
    raise InjectedExportError(MESSAGE)


def _calibrate(model, cfg, device):
    import modelopt.torch.quantization as mtq

    ids = calib_ids(seed=11).to(device)
    mtq.quantize(model, quant_config(cfg) if isinstance(cfg, str) else cfg, lambda m: m(ids))
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
    """Export with save_rescue=True and an error injected once config.json and the weights are on
    disk (both the resident and the streaming/offloaded path), or earlier if export fails by itself."""
    import modelopt.torch.export.unified_export_hf as resident
    import modelopt.torch.export.unified_export_hf_streaming as streaming
    from modelopt.torch.export import export_hf_checkpoint

    with monkeypatch.context() as m:
        m.setattr(resident, "_write_hf_export_config", _raise)
        m.setattr(streaming, "_sanitize_generation_config_for_save", _raise)
        with pytest.raises(Exception) as info:
            export_hf_checkpoint(model, export_dir=out, save_rescue=True)
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

    export_hf_checkpoint(model, export_dir=out, save_rescue=True)
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


def _saved_weights(rescue):
    from safetensors import safe_open

    with safe_open(str(rescue), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k != "__modelopt_rescue_state__"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("arch", GATED_ARCHS)
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
@pytest.mark.parametrize("arch", GATED_ARCHS)
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
@pytest.mark.parametrize("arch", GATED_ARCHS)
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
    weights = _saved_weights(rescue)
    assert "model.layers.1.self_attn.q_proj.weight" in weights

    _export(_calibrate(build(arch, seed=11, device=device), cfg, device), tmp_path / "direct")
    resumed = resume_from_rescue(build(arch, seed=11, device=device), rescue)
    _export(resumed, out)
    _assert_identical_checkpoints(tmp_path / "direct", out)


@contextmanager
def _one_module_at_a_time(monkeypatch):
    """Record the tensors each offload window of the rescue writer materializes; when the next
    window opens, none of the earlier ones may still be alive (nothing kept a reference)."""
    import modelopt.torch.export.calibration_rescue as calibration_rescue

    window = calibration_rescue.enable_weight_access_and_writeback
    earlier: list[tuple[str, weakref.ref]] = []
    opened = []

    @contextmanager
    def watched(module, *args, **kwargs):
        gc.collect()
        alive = [name for name, ref in earlier if ref() is not None]
        assert not alive, f"materialized weights of an earlier module still held: {alive[:3]}"
        with window(module, *args, **kwargs):
            opened.append(module)
            yield
            earlier.extend((n, weakref.ref(p)) for n, p in module.named_parameters() if not p.is_meta)

    monkeypatch.setattr(calibration_rescue, "enable_weight_access_and_writeback", watched)
    yield opened


def test_rescue_writes_offloaded_weights_one_module_at_a_time(tmp_path, monkeypatch):
    """The writer materializes one offloaded module, writes it and lets it go before the next
    (before: every quantized module's weights were gathered into host memory, then pickled)."""
    import modelopt.torch.export.calibration_rescue as calibration_rescue
    from modelopt.torch.export import resume_from_rescue, save_calibration_rescue

    model = _calibrate(_offloaded(ARCHS[0], "cpu", tmp_path / "off"), "NVFP4_DEFAULT_CFG", "cpu")
    # save the weights as after a weight-changing calibration, without running one
    monkeypatch.setattr(calibration_rescue, "_calibration_mutates_weights", lambda m: True)
    with _one_module_at_a_time(monkeypatch) as opened:
        rescue = save_calibration_rescue(model, tmp_path / RESCUE)
    assert len(opened) > 4, "the offloaded layer's modules were not read through their hooks"
    monkeypatch.undo()
    weights = _saved_weights(rescue)
    resident = build(ARCHS[0], seed=11)
    assert torch.equal(weights["model.layers.1.self_attn.q_proj.weight"], resident.model.layers[1].self_attn.q_proj.weight)
    resume_from_rescue(_offloaded(ARCHS[0], "cpu", tmp_path / "off2"), rescue)


def _other_hidden_size():
    import transformers

    config = tiny_config(ARCHS[0])
    config.hidden_size = 128
    torch.manual_seed(11)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


WRONG_MODELS = {
    # what the issue listed: another hidden size, other weights, another architecture; and other
    # routing with the same tensors (top-k), which calibration depends on
    "hidden-size": (_other_hidden_size, "config hidden_size is 64 in the file, 128 in this model"),
    "weights": (lambda: build(ARCHS[0], seed=12), "hold other values than in the calibrated model"),
    "top-k": (lambda: build(ARCHS[0], seed=11, top_k=1), "config num_experts_per_tok is 2 in the file, 1"),
    "mixtral": (lambda: build("mixtral", seed=11), "this model is a transformers.models.mixtral"),
}


@pytest.fixture(scope="module")
def awq_rescue(tmp_path_factory):
    from modelopt.torch.export import save_calibration_rescue

    model = _calibrate(build(ARCHS[0], seed=11), "NVFP4_AWQ_LITE_CFG", "cpu")
    return save_calibration_rescue(model, tmp_path_factory.mktemp("awq") / RESCUE)


@pytest.mark.parametrize("wrong", list(WRONG_MODELS))
def test_resume_refuses_a_rescue_of_another_model(wrong, awq_rescue):
    """Before: applied silently (with AWQ, the first model's smoothed weights were written into
    the second). Now: a ValueError naming the difference, and the model is left as it was."""
    from modelopt.torch.export import resume_from_rescue

    make, expected = WRONG_MODELS[wrong]
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="was saved from") as info:
        resume_from_rescue(model, awq_rescue)
    assert expected in str(info.value), str(info.value)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert resume_from_rescue(build(ARCHS[0], seed=11), awq_rescue) is not None  # the right one


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def test_resume_refuses_a_corrupt_rescue_file(awq_rescue, tmp_path):
    from modelopt.torch.export import resume_from_rescue

    data = awq_rescue.read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]
    corrupt = {
        "truncated": (data[:-100], "cannot be read as a calibration rescue file"),
        "state": (_flip(data, header + 40), "tensor __modelopt_rescue_state__ does not match its checksum"),
        "weight": (_flip(data, len(data) - 40), "does not match its checksum"),
        "not-safetensors": (b"PK\x03\x04" + data[4:200], "cannot be read as a calibration rescue file"),
    }
    for name, (content, expected) in corrupt.items():
        path = tmp_path / f"{name}.rescue"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="corrupt") as info:
            resume_from_rescue(build(ARCHS[0], seed=11), path)
        assert expected in str(info.value) and str(path) in str(info.value), (name, str(info.value))


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
        export_hf_checkpoint(model, export_dir=tmp_path, save_rescue=True)
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
