"""Shared test configuration: Hypothesis profiles, the upstream wheel, throwaway fork projects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]

# Profiles: `ci` is what .ci/run uses (>= 200 examples per property), `dev` is
# quick local iteration, `nightly` digs deeper. Select with HYPOTHESIS_PROFILE.
# Generation-efficiency checks only (not correctness): the tensor strategies draw many
# floats, and an occasional overrun must not fail a run at random.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                     HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=200, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=50, **_common)
settings.register_profile("nightly", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def upstream_wheel() -> Path:
    """The pinned upstream wheel, already verified by the install's materialize (no network here)."""
    from modelopt_fork.series.pin import load_pin
    from modelopt_fork.series.wheel import WHEEL_ENV, cache_dir

    pin = load_pin(REPO)
    env = os.environ.get(WHEEL_ENV)
    path = Path(env) if env else cache_dir(REPO) / pin.wheel
    if not path.is_file():
        pytest.fail(f"{path} missing: run `pip install -e .` (or `modelopt-fork materialize`) first, "
                    f"or set {WHEEL_ENV} to a local copy of {pin.wheel}")
    return path


@pytest.fixture
def fork_project(tmp_path, upstream_wheel, monkeypatch) -> Path:
    """A throwaway fork checkout in tmp_path: the real pin, an empty series, offline wheel."""
    root = tmp_path / "fork"
    (root / "patches").mkdir(parents=True)
    shutil.copyfile(REPO / "UPSTREAM.toml", root / "UPSTREAM.toml")
    (root / "patches" / "series").write_text("# test series\n")
    monkeypatch.setenv("MODELOPT_FORK_WHEEL", str(upstream_wheel))
    monkeypatch.delenv("MODELOPT_FORK_ROOT", raising=False)
    return root
