"""Tiny twins of real MoE models: same architecture class and expert layout, tiny sizes.

* :mod:`.source` -- read a config (bundled name, model directory or config.json path);
* :mod:`.shrink` -- shrink it, keeping what matters for MoE export;
* :mod:`.build` -- build the twin with seeded random weights (no downloads);
* :mod:`.moe` -- find MoE blocks structurally and count routed tokens per expert;
* :mod:`.scenarios` -- calibration-coverage scenarios driven by real routing.
"""

from .build import Twin, build_twin
from .source import BUNDLED, load_config_dict

__all__ = ["BUNDLED", "Twin", "build_twin", "load_config_dict"]
