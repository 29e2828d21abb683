"""The MoE export matrix: {architecture} x {NVFP4 config} x {scenario}, one transformers per run.

:mod:`.cell` runs one cell (build twin -> scenario -> quantize -> fake-quant forward ->
export -> checkpoint checks); :mod:`.upstream` runs cells against a pristine upstream
tree in a subprocess; :mod:`.table` prints the result.
"""
