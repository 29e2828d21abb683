"""Root conftest (loaded before any test module, including upstream_tests/).

`modelopt-fork check --red-green` runs tests against another materialized tree
(the series minus one patch) by setting MODELOPT_FORK_TREE: that tree goes
first on sys.path before anything imports modelopt, and the session refuses to
start if modelopt would still come from elsewhere.
"""

import os
import sys
from pathlib import Path

import pytest

TREE_ENV = "MODELOPT_FORK_TREE"
if os.environ.get(TREE_ENV):
    sys.path.insert(0, str(Path(os.environ[TREE_ENV]).resolve()))


def pytest_report_header(config):
    import modelopt

    return f"modelopt under test: {modelopt.__file__}"


def pytest_configure(config):
    if os.environ.get(TREE_ENV):
        import modelopt

        want = Path(os.environ[TREE_ENV]).resolve()
        if not Path(modelopt.__file__).resolve().is_relative_to(want):
            raise pytest.UsageError(f"{TREE_ENV}={want} but modelopt imports from {modelopt.__file__}")
