"""Log-probs of exported checkpoints in real vLLM (the vLLM stage of the matrix, engine side).

Runs in vLLM's environment (on the GPU machine: the offline kit of vLLM 0.25.1, see
``../shared/tools/vllm-kit``), so it imports neither ``modelopt`` nor the twin builder: only
``numpy`` and ``vllm``. One process serves several checkpoints one after another::

    python -m modelopt_fork.matrix.vllm_engine --backend emulation CKPT [CKPT ...]

For each ``CKPT`` it reads ``CKPT/prompt_ids.json``, builds an engine, takes the full-vocab
log-probs of every prompt position and writes ``CKPT/vllm_<backend>.npy`` (float32
``[n, vocab]``, row ``i`` = log-softmax of the logits at position ``i``, the layout of
``torch.log_softmax(model(ids).logits[0], -1)``), then prints one ``RESULT {json}`` line
(loaded or the error, timings) and frees the engine.

Engine arguments (vllm-kit README): ``enforce_eager``, ``skip_tokenizer_init`` with a token
prompt, ``attention_backend`` ``TRITON_ATTN`` (``TRITON_MLA`` for MLA models: FlashAttention and
FlashMLA are not in the kit), bf16, the FlashInfer sampler off. ``--backend emulation`` sets
``linear_backend`` and ``moe_backend`` to ``"emulation"``: NVFP4 weights are dequantized and
activations quantized with the checkpoint's input scales, as ModelOpt's fake quant does.
``--backend auto`` is vLLM's default (on an H200 without FlashInfer: Marlin, weight-only).
The KV cache is sized explicitly (``kv_cache_memory_bytes``) so that several engine processes
can share one GPU without vLLM's memory profiling seeing the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

ENV = {
    "TRITON_F32_DEFAULT": "ieee",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# emulation: NVFP4 emulation kernels in the checkpoint's dtype; auto: vLLM's default NVFP4 kernels
# (Marlin, bf16 only); unquantized: an unquantized checkpoint with the default kernels.
BACKENDS = ("emulation", "auto", "unquantized")


def checkpoint_dtype(config: dict) -> str:
    text = config.get("text_config") or {}
    return str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or "bfloat16")


def attention_backend(config: dict) -> str:
    """``TRITON_MLA`` for multi-head latent attention (DeepSeek-V2/V3 ``kv_lora_rank``), else ``TRITON_ATTN``.

    With ``VLLM_MLA_DISABLE=1`` vLLM runs MLA models with ordinary attention (needed in float32:
    the Triton MLA backend takes fp16/bf16 only).
    """
    text = config.get("text_config") or config
    mla = text.get("kv_lora_rank") and os.environ.get("VLLM_MLA_DISABLE", "0") != "1"
    return "TRITON_MLA" if mla else "TRITON_ATTN"


def engine_args(ckpt: Path, backend: str, *, max_model_len: int = 256) -> dict:
    config = json.loads((ckpt / "config.json").read_text())
    dtype = "bfloat16" if backend == "auto" else checkpoint_dtype(config)
    kw = dict(
        model=str(ckpt), skip_tokenizer_init=True, enforce_eager=True, dtype=dtype,
        gpu_memory_utilization=0.02, kv_cache_memory_bytes=256 << 20, max_model_len=max_model_len,
        max_num_seqs=4, max_num_batched_tokens=max(256, max_model_len), max_logprobs=-1, seed=0,
        enable_prefix_caching=False, attention_backend=attention_backend(config),
    )
    if backend == "emulation":
        kw.update(linear_backend="emulation", moe_backend="emulation")
    return kw


def _row(d, vocab):
    import numpy as np

    row = np.full(vocab, -np.inf, dtype=np.float32)
    for tok, lp in d.items():
        if tok < vocab:
            row[tok] = lp.logprob
    return row


def allow_float32_emulation() -> None:
    """Let the NVFP4 emulation backends run in float32.

    vLLM 0.25.1 refuses a float32 model with a ModelOpt quantization config because its native
    NVFP4 kernels take fp16/bf16 only (``ModelOptNvFp4Config.get_supported_act_dtypes``). The
    emulation kernels compute in the activation dtype and take float32 (the linear emulation's
    ``torch.matmul``, the fused MoE emulation kernel's ``compute_type`` float32), so the gate is
    widened to float32 for the emulation backend only. ``TRITON_F32_DEFAULT=ieee`` (set by the
    caller's environment before Triton compiles anything) keeps the MoE kernel's float32
    ``tl.dot`` in IEEE float32 rather than TF32; ``VLLM_FLOAT32_MATMUL_PRECISION`` stays at its
    default ``highest``. Nothing else of vLLM is changed.
    """
    import torch
    from vllm.model_executor.layers.quantization import modelopt

    for cls in (modelopt.ModelOptNvFp4Config, modelopt.ModelOptMixedPrecisionConfig):
        base = cls.get_supported_act_dtypes
        if not getattr(base, "_float32_allowed", False):
            def widened(self, _base=base):
                return [*_base(self), torch.float32]

            widened._float32_allowed = True
            cls.get_supported_act_dtypes = widened


def logprobs(ckpt: Path, backend: str) -> dict:
    """Run one checkpoint; write ``vllm_<backend>.npy``; return the record."""
    import numpy as np
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    ids = json.loads((ckpt / "prompt_ids.json").read_text())
    kw = engine_args(ckpt, backend)
    if backend == "emulation" and kw["dtype"] == "float32":
        allow_float32_emulation()
    t0 = time.perf_counter()
    llm = LLM(**kw)
    load_s = time.perf_counter() - t0
    try:
        vocab = llm.llm_engine.model_config.get_vocab_size()
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=-1, logprobs=-1, detokenize=False)
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], sp, use_tqdm=False)[0]
        rows = [_row(d, vocab) for d in out.prompt_logprobs[1:]]
        rows.append(_row(out.outputs[0].logprobs[0], vocab))
        lp = np.stack(rows)
        np.save(ckpt / f"vllm_{backend}.npy", lp)
        return {"load_s": round(load_s, 1), "shape": list(lp.shape), "nonfinite": int((~np.isfinite(lp)).sum()),
                "attention_backend": kw["attention_backend"], "dtype": kw["dtype"]}
    finally:
        del llm
        _free_engine()


def _free_engine() -> None:
    """Release the engine's GPU memory and distributed state so the next engine can start here."""
    import torch

    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # noqa: BLE001 -- best effort; a failing next engine is reported on its own
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    os.environ["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=BACKENDS, required=True)
    ap.add_argument("ckpts", nargs="+", type=Path)
    a = ap.parse_args(argv)
    for ckpt in a.ckpts:
        rec = {"ckpt": str(ckpt), "backend": a.backend}
        try:
            rec.update(logprobs(ckpt, a.backend), loaded=True)
        except Exception as e:  # noqa: BLE001 -- each checkpoint reports its own failure
            msg = str(e).strip().splitlines()
            rec.update(loaded=False, error=f"{type(e).__name__}: {msg[0] if msg else ''}"[:300],
                       where=traceback.format_exc(limit=-8).strip().splitlines()[-16:])
            _free_engine()
        print("RESULT " + json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
