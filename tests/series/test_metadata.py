"""Upstream Requires-Dist/extras are mirrored from the wheel's METADATA, extras split soundly."""

from __future__ import annotations

import itertools
from email.parser import HeaderParser

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelopt_fork.series.materialize import ensure_pristine
from modelopt_fork.series.metadata import read_metadata, split_extra
from modelopt_fork.series.pin import load_pin
from modelopt_fork.series.wheel import dist_info_dir

ENVS = [
    dict(platform_machine=m, platform_system=s, python_version=v, sys_platform="linux", os_name="posix",
         implementation_name="cpython", platform_python_implementation="CPython", python_full_version=v + ".0",
         platform_release="", platform_version="", implementation_version=v + ".0")
    for m, s, v in itertools.product(["x86_64", "aarch64", "AMD64", "ARM64"], ["Linux", "Windows", "Darwin"],
                                     ["3.10", "3.11", "3.12"])
]


def test_split_extra_preserves_marker_semantics(repo_root):
    pin = load_pin(repo_root)
    pristine = ensure_pristine(repo_root, pin)
    msg = HeaderParser().parsestr((dist_info_dir(pristine, pin) / "METADATA").read_text(), headersonly=True)
    extras = msg.get_all("Provides-Extra")
    lines = msg.get_all("Requires-Dist")
    assert len(lines) > 40 and "hf" in extras and "onnx" in extras
    for line in lines:
        orig = Requirement(line)
        extra, split = split_extra(line)
        new = Requirement(split)
        assert new.name == orig.name and new.specifier == orig.specifier and new.extras == orig.extras
        for env, e in itertools.product(ENVS, [*extras, ""]):
            want = orig.marker is None or orig.marker.evaluate({**env, "extra": e})
            in_extra = extra is None or extra == e
            got = in_extra and (new.marker is None or new.marker.evaluate({**env, "extra": e}))
            assert got == want, (line, env, e)


def test_read_metadata_mirrors_upstream(repo_root):
    pin = load_pin(repo_root)
    md = read_metadata(ensure_pristine(repo_root, pin), pin)
    assert md.requires_python == "<3.15,>=3.10"
    assert "torch>=2.8" in md.install_requires and "requests" not in md.install_requires
    assert any(r.startswith("transformers<5.15,>=4.57") for r in md.extras["hf"])
    assert set(md.extras) >= {"onnx", "hf", "all", "dev", "dev-test"}


def test_installed_distribution_is_the_fork(repo_root):
    from importlib.metadata import distribution

    import modelopt

    pin = load_pin(repo_root)
    dist = distribution("nvidia-modelopt")
    assert dist.version == pin.fork_version
    assert modelopt.__version__ == pin.fork_version
    assert str(repo_root / "modelopt") in modelopt.__file__
    reqs = [Requirement(r) for r in dist.requires or []]
    # the imports upstream 0.47.0 makes on `import modelopt.torch` without declaring them
    base = {canonicalize_name(r.name) for r in reqs if r.marker is None}
    assert {"requests", "huggingface-hub"} <= base
    assert any(r.name == "transformers" and r.marker and "hf" in str(r.marker) for r in reqs)
