"""`modelopt-fork validate` against hostile and degenerate inputs, generated in tmp dirs.

Each input must give either violations (exit 1) or one line on stderr with exit 2, never a
traceback, a hang, a read outside the directory or unbounded time and memory. The checkpoint is
a synthetic one-layer MoE in the fork's export layout (no model needed: each test < 2 s).
docs/reliability.md (## validate) lists what was tried and what held.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modelopt_fork.checkpoint import LoadError, validate_checkpoint
from modelopt_fork.checkpoint.load import Checkpoint

H, INTER, E = 32, 32, 8
PREFIX = "model.layers.0"
EXCLUDE = ["lm_head", f"{PREFIX}.mlp.gate"]
SHARD = "model.safetensors"


def _quantized(t: dict, name: str, out: int, inn: int, input_scale: float = 1.0) -> None:
    t[f"{name}.weight"] = torch.zeros(out, inn // 2, dtype=torch.uint8)
    t[f"{name}.weight_scale"] = torch.ones(out, inn // 16).to(torch.float8_e4m3fn)
    t[f"{name}.weight_scale_2"] = torch.tensor(1.0)
    t[f"{name}.input_scale"] = torch.tensor(input_scale)


def tensors(experts: int = E) -> dict[str, torch.Tensor]:
    t = {"model.embed_tokens.weight": torch.zeros(64, H, dtype=torch.bfloat16),
         f"{PREFIX}.input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
         f"{PREFIX}.mlp.gate.weight": torch.zeros(experts, H, dtype=torch.bfloat16),
         "model.norm.weight": torch.ones(H, dtype=torch.bfloat16),
         "lm_head.weight": torch.zeros(64, H, dtype=torch.bfloat16)}
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        _quantized(t, f"{PREFIX}.self_attn.{p}", H, H)
    for i in range(experts):
        for p, (out, inn) in {"gate_proj": (INTER, H), "up_proj": (INTER, H), "down_proj": (H, INTER)}.items():
            _quantized(t, f"{PREFIX}.mlp.experts.{i}.{p}", out, inn)
    return t


def write(d: Path, t: dict | None = None, shards: int = 1, experts: int = E, **config) -> Path:
    """A checkpoint directory: ``t`` (default :func:`tensors`) over ``shards`` shards (an index when
    more than one), hf_quant_config.json and config.json (``config`` updates the latter)."""
    d.mkdir(parents=True, exist_ok=True)
    t = tensors(experts) if t is None else t
    names = sorted(t)
    files = [SHARD] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {n: files[i * shards // max(len(names), 1)] for i, n in enumerate(names)}
    for f in files:
        save_file({n: t[n].contiguous() for n in names if weight_map[n] == f}, d / f, metadata={"format": "pt"})
    if shards > 1:
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16, "exclude_modules": EXCLUDE}
    (d / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    cfg = {"model_type": "qwen3_moe", "num_experts": experts, "dtype": "bfloat16",
           "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                   "ignore": EXCLUDE}, **config}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def set_index(d: Path, data) -> None:
    (d / "model.safetensors.index.json").write_text(data if isinstance(data, str) else json.dumps(data))


def cli(capsys, d: Path) -> tuple[int, list[str], str]:
    from modelopt_fork.cli import main

    capsys.readouterr()
    rc = main(["validate", str(d)])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def rules_of(d: Path) -> set[tuple[str, str]]:
    return {(v.rule, v.tensor) for v in validate_checkpoint(d)}


def assert_malformed(capsys, d: Path, *words: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr naming ``words``, no traceback."""
    rc, lines, err = cli(capsys, d)
    assert rc == 2 and lines == [], (rc, lines, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@contextmanager
def deadline(seconds: int):
    """Fail (instead of running on or eating the machine's memory) past ``seconds``."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_synthetic_base_is_clean(tmp_path, capsys):
    for shards in (1, 3):
        rc, lines, _ = cli(capsys, write(tmp_path / f"s{shards}", shards=shards))
        assert rc == 0, lines


# -- scale: one open per shard, nothing kept, expert counts bounded ----------------------------------

def _count_opens(monkeypatch) -> dict[str, int]:
    """File name -> how often safetensors, ``os.open`` or ``open`` opened it (from now on)."""
    import builtins

    import safetensors

    opens: dict[str, int] = {}

    def counting(fn):
        def wrapped(file, *a, **k):
            opens[Path(file).name] = opens.get(Path(file).name, 0) + 1
            return fn(file, *a, **k)
        return wrapped

    monkeypatch.setattr(safetensors, "safe_open", counting(safetensors.safe_open))
    monkeypatch.setattr(os, "open", counting(os.open))
    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    return opens


def test_each_shard_is_opened_once(tmp_path, monkeypatch):
    d = write(tmp_path / "ckpt", shards=3)
    opens = _count_opens(monkeypatch)
    assert validate_checkpoint(d) == []
    shards = {f: n for f, n in opens.items() if f.endswith(".safetensors")}
    assert len(shards) == 3
    # safetensors checks the header once, one descriptor serves every read: 2, for any tensor count
    assert max(shards.values()) <= 2, shards


def test_read_arrays_are_dropped(tmp_path, monkeypatch):
    """Arrays (block scales) are read one at a time and dropped; only per-tensor scalars are kept."""
    d = write(tmp_path / "ckpt")
    alive: list[weakref.ref] = []
    peak = [0]
    load = Checkpoint.load

    def tracking(self, name):
        t = load(self, name)
        if t.numel() > 1:
            alive[:] = [r for r in alive if r() is not None]
            alive.append(weakref.ref(t))
            peak[0] = max(peak[0], len(alive))
        return t

    monkeypatch.setattr(Checkpoint, "load", tracking)
    assert validate_checkpoint(d) == []
    assert 0 < peak[0] <= 2, peak[0]  # before: every block scale read stayed cached (28 here)


def test_30k_extra_tensors_cost_no_rereads(tmp_path, monkeypatch):
    """A big header is parsed once, not once per tensor read (before: a re-open and a re-parse of
    the 30k-entry header for each of ~280 reads, ~70 ms each)."""
    t = tensors()
    t.update({f"model.extra.{i}.weight": torch.zeros(1, dtype=torch.bfloat16) for i in range(30_000)})
    d = write(tmp_path / "ckpt", t)
    opens = _count_opens(monkeypatch)
    with deadline(60):  # a guard against a hang, not a timing (about 1 s here)
        assert validate_checkpoint(d) == []
    assert 0 < opens["model.safetensors"] <= 2, opens


def test_a_billion_experts_in_config_is_one_finding_per_gap(tmp_path):
    d = write(tmp_path / "ckpt", num_experts=10**9)
    with deadline(10):
        found = validate_checkpoint(d)
    missing = {v.tensor for v in found if v.rule == "experts-complete"}
    container = f"{PREFIX}.mlp.experts"
    assert missing == {f"{container}.{E}-{10**9 - 1}.{p}" for p in ("down_proj", "gate_proj", "up_proj")}


def test_missing_experts_between_present_ones_are_runs(tmp_path):
    t = {k: v for k, v in tensors().items() if not any(f".experts.{i}." in k for i in (2, 3, 5))}
    found = rules_of(write(tmp_path / "ckpt", t))
    c = f"{PREFIX}.mlp.experts"
    assert {n for r, n in found if r == "experts-complete"} == {
        f"{c}.{s}.{p}" for s in ("2-3", "5") for p in ("down_proj", "gate_proj", "up_proj")}


def test_a_5000_digit_expert_index_is_malformed(tmp_path, capsys):
    t = tensors()
    _quantized(t, f"{PREFIX}.mlp.experts.{'9' * 5000}.gate_proj", INTER, H)
    assert_malformed(capsys, write(tmp_path / "ckpt", t), "5000 digits")


# -- paths stay inside the directory --------------------------------------------------------------------

def _outside(tmp_path: Path) -> Path:
    return write(tmp_path / "outside", shards=1) / SHARD


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_index_naming_a_file_outside_is_malformed(tmp_path, capsys, how):
    outside = _outside(tmp_path)
    d = write(tmp_path / "ckpt", shards=2)
    name = "../outside/model.safetensors" if how == "dotdot" else str(outside)
    idx = index(d)
    idx["weight_map"] = {k: name for k in idx["weight_map"]}
    set_index(d, idx)
    assert_malformed(capsys, d, name)


@pytest.mark.parametrize("with_index", [False, True])
def test_a_shard_symlinked_out_of_the_directory_is_malformed(tmp_path, capsys, with_index):
    outside = _outside(tmp_path)
    d = write(tmp_path / "ckpt", shards=2 if with_index else 1)
    shard = sorted(d.glob("*.safetensors"))[0]
    shard.unlink()
    shard.symlink_to(outside)
    assert_malformed(capsys, d, "outside the checkpoint directory")


def test_a_symlink_inside_the_directory_is_followed(tmp_path, capsys):
    d = write(tmp_path / "ckpt")
    (d / "data").mkdir()
    (d / SHARD).rename(d / "data" / SHARD)
    (d / SHARD).symlink_to(Path("data") / SHARD)
    assert cli(capsys, d)[0] == 0


def test_config_symlinked_out_is_malformed(tmp_path, capsys):
    outside = _outside(tmp_path).parent / "config.json"
    d = write(tmp_path / "ckpt")
    (d / "config.json").unlink()
    (d / "config.json").symlink_to(outside)
    assert_malformed(capsys, d, "outside the checkpoint directory")


# -- malformed input: one line, exit 2, no hang ----------------------------------------------------------

@pytest.mark.parametrize("value", [5, None, ["model.safetensors"], {"f": 1}, True, ""])
def test_a_non_string_index_value_is_malformed(tmp_path, capsys, value):
    d = write(tmp_path / "ckpt", shards=2)
    idx = index(d)
    idx["weight_map"][sorted(idx["weight_map"])[0]] = value
    set_index(d, idx)
    assert_malformed(capsys, d, "model.safetensors.index.json")


@pytest.mark.parametrize("file", ["config.json", "hf_quant_config.json", "model.safetensors.index.json"])
def test_deeply_nested_json_is_malformed(tmp_path, capsys, file):
    d = write(tmp_path / "ckpt", shards=2)
    (d / file).write_text("[" * 200_000 + "]" * 200_000)
    assert_malformed(capsys, d, file)


def test_a_5000_digit_number_in_config_is_malformed(tmp_path, capsys):
    d = write(tmp_path / "ckpt")
    (d / "config.json").write_text('{"num_experts": ' + "7" * 5000 + "}")
    assert_malformed(capsys, d, "config.json")


def test_an_empty_weight_map_is_malformed(tmp_path, capsys):
    d = write(tmp_path / "ckpt", shards=2)
    set_index(d, {"weight_map": {}})
    assert_malformed(capsys, d, "weight_map names no tensors")


@pytest.mark.parametrize("file", ["model.safetensors", "config.json", "model.safetensors.index.json"])
def test_a_fifo_is_malformed_and_does_not_hang(tmp_path, capsys, file):
    d = write(tmp_path / "ckpt")
    (d / file).unlink(missing_ok=True)
    os.mkfifo(d / file)

    # a reader stuck in open() gets EOF after 30 s, so a regression fails instead of hanging (from
    # another process: the stuck open may hold the GIL); the refusal itself takes milliseconds, and
    # 20 s tells it from a stuck open on a loaded machine
    writer = subprocess.Popen(["sh", "-c", f"sleep 30; : > '{d / file}'"])
    start = time.monotonic()
    try:
        assert_malformed(capsys, d, file, "not a regular file")
        assert time.monotonic() - start < 20
    finally:
        writer.kill()
        writer.wait()


def test_odd_config_types_never_crash(tmp_path, capsys):
    odd = [{"num_experts": "8"}, {"num_experts": True}, {"num_experts": -3}, {"text_config": [1]},
           {"dtype": 5}, {"quantization_config": "NVFP4"}, {"quantization_config": {"quant_algo": 5, "ignore": 7}}]
    for i, cfg in enumerate(odd):
        rc, lines, err = cli(capsys, write(tmp_path / f"c{i}", **cfg))
        assert rc in (0, 1) and "Traceback" not in err, (cfg, rc, err)
    hf = [{"quantization": []}, {"quantization": {"quant_algo": ["NVFP4"], "group_size": "16",
                                                  "exclude_modules": [1, None], "quantized_layers": [3]}}]
    for i, data in enumerate(hf):
        d = write(tmp_path / f"h{i}")
        (d / "hf_quant_config.json").write_text(json.dumps(data))
        rc, lines, err = cli(capsys, d)
        assert rc == 1 and "Traceback" not in err, (data, rc, err)


def test_load_error_is_raised_not_other_exceptions(tmp_path):
    d = write(tmp_path / "ckpt", shards=2)
    set_index(d, {"weight_map": {"a.weight": 3}})
    with pytest.raises(LoadError):
        validate_checkpoint(d)


# -- non-checkpoints do not pass ------------------------------------------------------------------------

def test_an_empty_shard_has_no_quantized_module(tmp_path):
    found = rules_of(write(tmp_path / "ckpt", {}))
    assert ("quantized-modules-present", "hf_quant_config.json:quantization.quant_algo") in found


def test_only_lm_head_has_no_quantized_module(tmp_path):
    found = rules_of(write(tmp_path / "ckpt", {"lm_head.weight": torch.zeros(64, H, dtype=torch.bfloat16)}))
    assert {r for r, _ in found} == {"quantized-modules-present"}


def test_nvfp4_label_with_every_weight_unquantized(tmp_path):
    t = {k: (torch.zeros(v.shape[0], 2 * v.shape[1], dtype=torch.bfloat16) if v.dtype == torch.uint8 else v)
         for k, v in tensors().items() if not k.endswith(("_scale", "_scale_2"))}
    assert "quantized-modules-present" in {r for r, _ in rules_of(write(tmp_path / "ckpt", t))}


def test_index_tensor_absent_from_its_shard(tmp_path):
    d = write(tmp_path / "ckpt", shards=2)
    idx = index(d)
    idx["weight_map"]["model.layers.0.self_attn.q_proj.bias"] = sorted(set(idx["weight_map"].values()))[0]
    set_index(d, idx)
    assert rules_of(d) == {("index-matches-shards",
                            "model.safetensors.index.json:weight_map.model.layers.0.self_attn.q_proj.bias")}


def test_index_placing_a_tensor_in_the_wrong_shard(tmp_path):
    d = write(tmp_path / "ckpt", shards=2)
    idx = index(d)
    files = sorted(set(idx["weight_map"].values()))
    name = next(k for k, f in sorted(idx["weight_map"].items()) if f == files[0])
    idx["weight_map"][name] = files[1]
    set_index(d, idx)
    assert rules_of(d) == {("index-matches-shards", name)}


def test_shard_tensor_missing_from_the_index(tmp_path):
    d = write(tmp_path / "ckpt", shards=2)
    idx = index(d)
    name = sorted(idx["weight_map"])[0]
    del idx["weight_map"][name]
    set_index(d, idx)
    assert rules_of(d) == {("index-matches-shards", name)}


# -- scales a runtime inverts ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1e-39, 2.5e-39, 1e-45, 1.1e-38])
@pytest.mark.parametrize("module", ["self_attn.o_proj", "experts"])
def test_subnormal_input_scale(tmp_path, value, module):
    """float32 1 / x is inf below 2**-128 and > 2**126 for any subnormal: every one is refused."""
    t = tensors()
    names = [k for k in t if k.endswith(".input_scale") and module in k]
    for k in names:
        t[k] = torch.tensor(value, dtype=torch.float32)
    assert torch.isinf(1 / t[names[0]]) or value > 2.0**-128
    found = rules_of(write(tmp_path / "ckpt", t))
    assert {n for r, n in found if r == "input-scale-normal"} == set(names), found
