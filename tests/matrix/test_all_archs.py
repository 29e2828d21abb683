"""`modelopt-fork matrix --all-archs`: the report from results, and (slow) the command end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modelopt_fork.matrix.all_archs import FIXUPS, markdown_report, stage_counts


def _r(arch, cfg, ok, stage="", error=""):
    return {"arch": arch, "cfg": cfg, "scenario": "full", "ok": ok, "stage": stage, "error": error}


RESULTS = [
    _r("mixtral", "NVFP4_DEFAULT_CFG", True), _r("mixtral", "NVFP4_AWQ_LITE_CFG", True),
    _r("aria_text", "NVFP4_DEFAULT_CFG", False, "build", "aria_text: the twin has no MoE block with experts"),
    _r("aria_text", "NVFP4_AWQ_LITE_CFG", False, "build", "aria_text: the twin has no MoE block with experts"),
    _r("gpt_oss", "NVFP4_DEFAULT_CFG", True),
    _r("gpt_oss", "NVFP4_AWQ_LITE_CFG", False, "check", "model.layers.0.mlp.experts: no quantized expert weight"),
]
PREPARED = [{"type": t, "dir": f"/tmp/x/{t}", "fixup": "because" if t == "aria_text" else "",
             "causal_lm": "X", "experts": "num_experts=8", "wrappers": []} for t in ("mixtral", "aria_text", "gpt_oss")]


def test_stage_counts():
    assert stage_counts(RESULTS)["NVFP4_DEFAULT_CFG"] == {
        "pass": 2, "build": 1, "calibrate": 0, "forward": 0, "export": 0, "check": 0, "validate": 0,
        "reference": 0, "runtime": 0}
    assert stage_counts(RESULTS)["NVFP4_AWQ_LITE_CFG"]["check"] == 1


def test_report_says_how_it_ran_and_why_each_row_fails():
    md = markdown_report(PREPARED, RESULTS, title="T", command="modelopt-fork matrix --all-archs",
                         label="fork", dense_by_default=["doge"])
    assert "* command: `modelopt-fork matrix --all-archs`" in md
    assert "* every stage on every qformat: **1/3** types" in md
    assert "| aria_text | full | FAIL build [1] | FAIL build [1] |" in md
    assert "| nvfp4 | 2 | 1 | 0 |" in md
    assert ("* `aria_text`: nvfp4, awq_lite fail at `build`: aria_text: the twin has no MoE block with experts"
            in md)
    assert "* `gpt_oss`: awq_lite fail at `check`: model.layers.0.mlp.experts: no quantized expert weight " \
           "(nvfp4 pass)" in md
    assert "* `aria_text`: because" in md and "`doge`" in md
    assert "`mixtral`:" not in md.split("## Failing rows")[1].split("##")[0]


def test_fixups_make_class_defaults_build():
    from transformers import CONFIG_MAPPING

    if "lfm2_moe" not in CONFIG_MAPPING:
        pytest.skip("transformers has no lfm2_moe")
    d = CONFIG_MAPPING["lfm2_moe"]().to_dict()
    assert d["layer_types"] is None  # the class default the fix-up exists for
    FIXUPS["lfm2_moe"][0](d)
    assert len(d["layer_types"]) == d["num_hidden_layers"] and {"conv", "full_attention"} == set(d["layer_types"])


def _fork(*args):
    return subprocess.run([sys.executable, "-m", "modelopt_fork", *args], capture_output=True, text=True, timeout=900)


def test_all_archs_refuses_bundled_axes(capsys):
    from modelopt_fork.cli import main

    assert main(["matrix", "--all-archs", "--arch", "mixtral-8x7b"]) == 2
    assert "--all-archs takes --type" in capsys.readouterr().err
    assert main(["matrix", "--type", "mixtral"]) == 2
    assert "--type and --write need --all-archs" in capsys.readouterr().err


@pytest.mark.slow
def test_all_archs_end_to_end(tmp_path):
    p = _fork("matrix", "--all-archs", "--type", "nope")
    assert p.returncode == 2 and "not an MoE causal-LM type" in p.stderr
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    p = _fork("matrix", "--all-archs", "--type", "mixtral", "--type", "jamba", "--cfg", "NVFP4_DEFAULT_CFG",
              "--json", str(out), "--write", str(md))
    res = json.loads(out.read_text())
    by = {r["arch"]: r for r in res["results"]}
    assert set(by) == {"mixtral", "jamba"}
    assert by["mixtral"]["ok"], by["mixtral"]["error"]
    assert p.returncode == (0 if all(r["ok"] for r in by.values()) else 1)
    assert "/tmp" not in json.dumps(res["results"])  # errors name the type, not its directory
    assert "| mixtral | full | pass |" in md.read_text()
