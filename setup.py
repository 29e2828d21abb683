"""Build nvidia-modelopt <pin>+<local> from the pinned upstream wheel and patches/series.

Everything upstream-derived comes from the wheel at build time: the source
tree (materialized into modelopt/ by modelopt_fork.series.materialize) and the
dependency metadata (read from the wheel's METADATA). Nothing here retypes it.
"""

import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from modelopt_fork.series.materialize import ensure_pristine, materialize  # noqa: E402
from modelopt_fork.series.metadata import read_metadata  # noqa: E402
from modelopt_fork.series.pin import load_pin  # noqa: E402

PIN = load_pin(ROOT)
materialize(ROOT, log=lambda m: print(f"modelopt-fork: {m}", file=sys.stderr))
UPSTREAM = read_metadata(ensure_pristine(ROOT, PIN), PIN)

# What modelopt_fork itself needs at run time (the materializer, check, refresh).
TOOLING_REQUIRES = ["packaging>=23", "unidiff>=0.7", "tomli>=1.1; python_version < '3.11'", "tomlkit>=0.12"]
FORK_EXTRAS = {
    # `modelopt-fork preflight` / `matrix`: tiny twins need transformers (upstream lists it only
    # in the heavy "hf" extra); modelopt 0.47 supports transformers < 5.15.
    "preflight": ["transformers>=4.57,<5.15"],
    # Our test gate (CPU). torch is not listed: install the CPU build first
    # (`pip install torch==2.13.0`), a bare requirement pulls a CUDA build.
    "fork-test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "hypothesis>=6.100",
        "transformers>=4.57,<5.15",
        "accelerate>=1.0",
        # independent NVFP4 cross-check (tests/checkpoint/test_compressed_tensors.py); 0.20 needs
        # python >= 3.11 and brings only pydantic, loguru, psutil besides torch/transformers
        "compressed-tensors>=0.20,<0.21; python_version >= '3.11'",
        # `check --lint` (upstream's ruff settings; tests/series/test_upstream_lint.py)
        "ruff==0.17.6",
        # `upstream-suite --coverage` (per-patch statement coverage; `patch = subprocess` needs 7.10)
        "coverage>=7.10",
    ],
}

setup(
    name=PIN.distribution,
    version=PIN.fork_version,
    description="nvidia-modelopt with the MoE NVFP4 export patch series (modelopt-fork)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=UPSTREAM.requires_python,
    packages=find_packages(
        include=["modelopt", "modelopt.*", "modelopt_recipes", "modelopt_recipes.*", "modelopt_fork", "modelopt_fork.*"]
    ),
    package_data={
        "modelopt": ["**/*.cpp", "**/*.cu", "**/*.h", "**/*.md", "**/*.json", "**/*.yaml", "**/*.yml"],
        "modelopt_recipes": ["**/*"],
        "modelopt_fork": ["**/*.json", "**/*.toml"],
    },
    install_requires=UPSTREAM.install_requires + list(PIN.extra_requires) + TOOLING_REQUIRES,
    extras_require={**UPSTREAM.extras, **FORK_EXTRAS},
    entry_points={"console_scripts": ["modelopt-fork=modelopt_fork.cli:main"]},
)
