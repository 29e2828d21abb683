"""Tooling for the nvidia-modelopt MoE patch-series fork.

Two halves, joined only by :mod:`modelopt_fork.cli`:

* :mod:`modelopt_fork.series` -- the upstream pin, the patch series and the
  generated ``modelopt/`` tree (materialize, check, refresh, status).
* MoE harness modules (added by later work) -- tiny twins, scenarios, checks.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
