"""`modelopt-fork preflight`: a model directory with only config.json, an MoE not in the bundle."""

from __future__ import annotations

import pytest

from _utils.unbundled import write_model_dir
from modelopt_fork.cli import main


# the CLI path is one for every qformat; AWQ's cost is the calibration (the CI budget)
@pytest.mark.parametrize("qformat", ["nvfp4", pytest.param("nvfp4_awq_lite", marks=pytest.mark.slow)])
def test_preflight_on_unbundled_config_dir(qformat, tmp_path, capsys):
    model_dir = write_model_dir(tmp_path, "olmoe")
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json"]  # no weights, nothing else
    rc = main(["preflight", str(model_dir), "--qformat", qformat, "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for stage in ("build", "calibrate", "forward", "export", "check", "validate", "reference"):
        assert f"[pass] {stage}" in out, out
    assert "result: PASS" in out
    assert "bit-exact" in out and "experts with no calibration tokens: " in out


def test_preflight_reports_the_failing_stage(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, '
                                     '"num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 128}')
    rc = main(["preflight", str(bad), "--qformat", "nvfp4"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[FAIL] build: ForkError" in out and "has no MoE block" in out
    assert "[ -- ] export: not reached" in out
