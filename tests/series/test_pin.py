"""UPSTREAM.toml: the pin is rewritten with tomlkit, every comment and other key kept."""

from __future__ import annotations

import shutil

import pytest

from modelopt_fork.series.errors import PinError
from modelopt_fork.series.pin import PIN_FILE, load_pin, write_pin


def test_write_pin_changes_only_the_pin(repo_root, tmp_path):
    shutil.copy(repo_root / PIN_FILE, tmp_path / PIN_FILE)
    before = (tmp_path / PIN_FILE).read_text()
    pin = write_pin(tmp_path, version="9.9.9", wheel="nvidia_modelopt-9.9.9-py3-none-any.whl", sha256="ab" * 32)
    assert (pin.version, pin.wheel, pin.sha256) == ("9.9.9", "nvidia_modelopt-9.9.9-py3-none-any.whl", "ab" * 32)
    after = (tmp_path / PIN_FILE).read_text()
    old, new = load_pin(repo_root), load_pin(tmp_path)
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [(f'version = "{old.version}"', 'version = "9.9.9"'),
                       (f'wheel = "{old.wheel}"', 'wheel = "nvidia_modelopt-9.9.9-py3-none-any.whl"'),
                       (f'sha256 = "{old.sha256}"', f'sha256 = "{"ab" * 32}"')]
    assert new.packages == old.packages


def test_write_pin_names_the_missing_key(tmp_path):
    (tmp_path / PIN_FILE).write_text('# a comment\n[upstream]\nversion = "1"\nwheel = "w.whl"\n')
    with pytest.raises(PinError, match=r'\[upstream\] has no line sha256 = "\.\.\." to update'):
        write_pin(tmp_path, version="2", wheel="x.whl", sha256="00")
    (tmp_path / PIN_FILE).write_text("[fork]\n")
    with pytest.raises(PinError, match=r"no \[upstream\] table"):
        write_pin(tmp_path, version="2", wheel="x.whl", sha256="00")
