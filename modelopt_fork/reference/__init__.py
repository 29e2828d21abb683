"""A reference NVFP4 runtime in pure PyTorch, independent of ModelOpt's quantization code.

``nvfp4``: E2M1 / FP8 numerics (unpack, weight dequantization, activation quantization);
``runtime``: load an exported checkpoint into a transformers model that runs those numerics;
``compare``: logits of a checkpoint vs the fake-quantized and the original model.
"""
