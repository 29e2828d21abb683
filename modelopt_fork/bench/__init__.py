"""Helpers of the GPU benchmark scripts in ``benchmarks/`` (fork vs pristine upstream, scaling).

* :mod:`.procs`   -- run a worker with the fork's or a pristine upstream ``modelopt``;
* :mod:`.record`  -- results written incrementally (a timeout still leaves them);
* :mod:`.measure` -- synchronized wall time and peak accelerator memory of a phase;
* :mod:`.scaling` -- is the export cost per expert constant?
"""
