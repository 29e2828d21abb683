"""`modelopt-fork validate` on a checkpoint of Qwen3-30B-A3B's size: wall time and peak RSS.

Builds a synthetic NVFP4 export with Qwen3-30B-A3B's tensor names and shapes (48 layers, 128
experts, hidden 2048, moe_intermediate 768, 32 query / 4 KV heads of 128, vocab 151936): packed
uint8 weights [out, in/2], float8_e4m3fn weight_scale [out, in/16], float32 weight_scale_2 and
input_scale scalars on the attention q/k/v/o and every expert's gate/up/down; norms, the router
``mlp.gate`` (excluded) and ``lm_head`` unquantized. Real-size headers and real-size data
regions, written sparse: the scalars hold 1.0, everything else reads as zeros (a valid value for
every rule) and takes no disk. 4 shards and an index, as ModelOpt writes them.

Each validate runs in a fresh process under ``--limit`` seconds; peak RSS is its VmHWM
(``/proc/self/status``: ``resource.getrusage``'s ``ru_maxrss`` keeps the forking parent's peak
across exec, so it would report this script's own size); ``--tree DIR`` runs another
checkout's ``modelopt_fork`` (e.g. the code before a change).
Prints a markdown table: layers, tensors, shard bytes, wall seconds, peak RSS, RSS after imports.

    python benchmarks/validate_scale.py [--layers 12,48] [--tree DIR] [--limit 600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

LAYERS, EXPERTS, HIDDEN, MOE_INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 48, 128, 2048, 768, 32, 4, 128, 151936
SHARDS = 4
_TAGS = {torch.uint8: "U8", torch.float8_e4m3fn: "F8_E4M3", torch.float32: "F32", torch.bfloat16: "BF16"}


def layout(layers: int) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of every tensor, in export order."""
    out: list[tuple[str, torch.dtype, tuple[int, ...]]] = [("model.embed_tokens.weight", torch.bfloat16,
                                                            (VOCAB, HIDDEN))]

    def quantized(name: str, rows: int, cols: int) -> None:
        out.extend([(f"{name}.weight", torch.uint8, (rows, cols // 2)),
                    (f"{name}.weight_scale", torch.float8_e4m3fn, (rows, cols // 16)),
                    (f"{name}.weight_scale_2", torch.float32, ()), (f"{name}.input_scale", torch.float32, ())])

    for i in range(layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", torch.bfloat16, (HIDDEN,)),
                (f"{p}.post_attention_layernorm.weight", torch.bfloat16, (HIDDEN,)),
                (f"{p}.self_attn.q_norm.weight", torch.bfloat16, (HEAD_DIM,)),
                (f"{p}.self_attn.k_norm.weight", torch.bfloat16, (HEAD_DIM,)),
                (f"{p}.mlp.gate.weight", torch.bfloat16, (EXPERTS, HIDDEN))]
        quantized(f"{p}.self_attn.q_proj", HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(f"{p}.self_attn.o_proj", HIDDEN, HEADS * HEAD_DIM)
        for e in range(EXPERTS):
            quantized(f"{p}.mlp.experts.{e}.gate_proj", MOE_INTER, HIDDEN)
            quantized(f"{p}.mlp.experts.{e}.up_proj", MOE_INTER, HIDDEN)
            quantized(f"{p}.mlp.experts.{e}.down_proj", HIDDEN, MOE_INTER)
    out += [("model.norm.weight", torch.bfloat16, (HIDDEN,)), ("lm_head.weight", torch.bfloat16, (VOCAB, HIDDEN))]
    return out


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def write_shard(path: Path, tensors: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> int:
    """A valid safetensors file: scalars first with 1.0, the rest a sparse zero region. Its size."""
    order = sorted(tensors, key=lambda t: len(t[2]) != 0)  # scalars first, stable otherwise
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in order:
        n = _nbytes(dtype, shape)
        header[name] = {"dtype": _TAGS[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    scalars = sum(1 for _, _, shape in order if not shape)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.write(torch.ones(scalars, dtype=torch.float32).numpy().tobytes())
        f.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def build(d: Path, layers: int) -> tuple[int, int]:
    """The checkpoint in ``d``: (tensor count, total shard bytes)."""
    d.mkdir(parents=True, exist_ok=True)
    tensors = layout(layers)
    total = sum(_nbytes(dt, s) for _, dt, s in tensors)
    groups: list[list] = [[] for _ in range(SHARDS)]
    done = 0
    for t in tensors:
        groups[min(SHARDS - 1, done * SHARDS // total)].append(t)
        done += _nbytes(t[1], t[2])
    files = [f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors" for i in range(SHARDS)]
    size = sum(write_shard(d / f, g) for f, g in zip(files, groups, strict=True))
    weight_map = {name: f for f, g in zip(files, groups, strict=True) for name, _, _ in g}
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))
    exclude = ["lm_head", *(f"model.layers.{i}.mlp.gate" for i in range(layers))]
    quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16, "exclude_modules": exclude}
    (d / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": quant}, indent=4))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "dtype": "bfloat16",
        "hidden_size": HIDDEN, "moe_intermediate_size": MOE_INTER, "num_hidden_layers": layers,
        "num_experts": EXPERTS, "num_experts_per_tok": 8, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                "ignore": exclude, "kv_cache_scheme": None}}, indent=2))
    return len(tensors), size


PROBE = textwrap.dedent("""
    import json, re, sys, time
    from pathlib import Path
    from modelopt_fork.checkpoint import validate_checkpoint
    import modelopt_fork.checkpoint.rules  # imports done: the baseline

    def hwm():  # this process's peak RSS in KiB (ru_maxrss would include the parent's, kept across exec)
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1])

    base = hwm()
    t0 = time.perf_counter()
    found = validate_checkpoint(sys.argv[1])
    wall = time.perf_counter() - t0
    peak = hwm()
    print(json.dumps({"wall": wall, "peak_kib": peak, "base_kib": base, "violations": len(found),
                      "code": validate_checkpoint.__code__.co_filename}))
""")


def measure(d: Path, tree: Path | None, limit: int) -> dict:
    tree = tree or Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    try:  # run in the tree: `python -c` puts the working directory first on sys.path
        p = subprocess.run([sys.executable, "-c", PROBE, str(d)], capture_output=True, text=True, env=env,
                           timeout=limit, cwd=tree)
    except subprocess.TimeoutExpired:
        return {"killed": limit}
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="12,48", help="comma-separated layer counts (48: Qwen3-30B-A3B)")
    ap.add_argument("--tree", type=Path, help="a checkout whose modelopt_fork to time instead of this one")
    ap.add_argument("--limit", type=int, default=600, help="seconds before a validate run is killed")
    ap.add_argument("--keep", type=Path, help="build the checkpoints here and keep them")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="validate-scale-"))
    print("| layers | tensors | shard bytes (sparse) | validate wall s | peak RSS MiB | RSS after imports MiB | "
          "violations |")
    print("|---|---|---|---|---|---|---|")
    try:
        for layers in map(int, args.layers.split(",")):
            d = root / f"qwen3-30b-a3b-{layers}l"
            n, size = build(d, layers)
            r = measure(d, args.tree, args.limit)
            if "wall" in r:
                cells = [f"{r['wall']:.1f}", f"{r['peak_kib'] / 1024:.0f}", f"{r['base_kib'] / 1024:.0f}",
                         str(r["violations"])]
            else:
                cells = [f"killed at {r['killed']} s" if "killed" in r else r["error"][:80], "", "", ""]
            print(f"| {layers} | {n} | {size / 2**30:.1f} GiB | " + " | ".join(cells) + " |", flush=True)
            if "code" in r:
                print(f"<!-- validate from {r['code']} -->", flush=True)
            if args.keep is None:
                shutil.rmtree(d)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
