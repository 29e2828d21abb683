"""Tiny twins of real MoE models: same architecture class and expert layout, tiny sizes.

* :mod:`.source` -- read a config (bundled name, model directory or config.json path);
* :mod:`.shrink` -- shrink it, keeping what matters for MoE export;
* :mod:`.layout` -- the layer layout (per-layer lists, dense-first counts, index lists) cut to
  the twin's depth, keeping an MoE layer, an attention layer, a dense-first layer;
* :mod:`.discover` -- every MoE causal-LM type of the installed transformers;
* :mod:`.build` -- build the twin with seeded random weights (no downloads);
* :mod:`.moe` -- find MoE blocks structurally and count routed tokens per expert;
* :mod:`.scenarios` -- calibration-coverage scenarios driven by real routing.
"""

from .build import Twin, build_twin
from .source import BUNDLED, load_config_dict

__all__ = ["BUNDLED", "Twin", "build_twin", "load_config_dict"]
