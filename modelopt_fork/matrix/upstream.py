"""Run matrix cells against a pristine upstream tree (optionally with some of our patches).

The tree is built once per (version, patches) under ``.modelopt-fork/upstream/`` and the
cells run in a subprocess whose ``sys.path`` starts with that tree, so ``import modelopt``
there is the upstream code (the worker refuses to run otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..series.errors import ForkError
from ..series.materialize import STATE_DIR, build_tree, ensure_pristine
from ..series.pin import load_pin
from ..series.wheel import cache_dir, pip_download, sha256_file, unpack

TREE_ENV = "MODELOPT_FORK_TREE"


def upstream_wheel(root: Path, version: str, log=print) -> Path:
    """The nvidia-modelopt ``version`` wheel, downloaded once into the cache (sha256 logged)."""
    pin = load_pin(root)
    if version == pin.version:
        from ..series.wheel import obtain_wheel

        return obtain_wheel(pin, root, log)
    for found in sorted(cache_dir(root).glob(f"nvidia_modelopt-{version}-*.whl")):
        # only a wheel whose sha256 was recorded when it was downloaded, and still matches it
        record = found.with_name(found.name + ".sha256")
        if not record.is_file():
            continue
        want, got = record.read_text().split()[0], sha256_file(found)
        if got != want:
            raise ForkError(f"{found}: sha256 {got}, but {want} was recorded when it was downloaded: "
                            "the cached wheel changed; delete it to download it again")
        return found
    cache_dir(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(root)) as tmp:
        got = pip_download(f"nvidia-modelopt=={version}", Path(tmp), log)
        final = cache_dir(root) / got.name
        digest = sha256_file(got)
        os.replace(got, final)
        final.with_name(final.name + ".sha256").write_text(f"{digest}  {final.name}\n")
    log(f"{final.name}: sha256 {digest}")
    return final


def tree_key(root: Path, version: str, patches: tuple[str, ...]) -> str:
    """The cache name of pristine ``version`` + ``patches``: their numbers and a digest of their contents."""
    import hashlib

    from ..series.seriesfile import load_series

    h = hashlib.sha256(version.encode())
    if patches:
        series = load_series(root)
        for name in patches:
            h.update(b"\0" + name.encode() + b"\0" + series.path(name).read_bytes())
    return "+".join([version, *[p.split("-")[0] for p in patches]]) + f"-{h.hexdigest()[:16]}"


def upstream_tree(root: Path, version: str, patches: tuple[str, ...] = (), log=print) -> Path:
    """A tree of pristine ``version`` plus ``patches`` of our series, built once."""
    pin = load_pin(root)
    base = Path(root) / STATE_DIR / "upstream" / tree_key(root, version, patches)  # an edited patch: a new tree
    if (base / ".complete").is_file():
        return base
    shutil.rmtree(base, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base.parent if base.parent.exists() else None))
    try:
        if version == pin.version:
            if patches:
                build_tree(root, list(patches), tmp / "t", log)
            else:
                shutil.copytree(ensure_pristine(root, pin, log), tmp / "t")
        else:
            unpack(upstream_wheel(root, version, log), tmp / "t", tuple(pin.packages))
            if patches:
                from ..series.apply import apply_patch
                from ..series.seriesfile import load_series

                series = load_series(root)
                for name in patches:  # our patches are written against the pin: no fuzz, or an error
                    apply_patch(name, series.path(name).read_text(encoding="utf-8"), tmp / "t")
        (tmp / "t" / ".complete").write_text(version + "\n")
        base.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "t", base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def run_cells_in(tree: Path, root: Path, cells, *, device: str, out_dir: Path, on_result=None,
                 stages=("validate", "reference")) -> list[dict]:
    """Run ``cells`` in a subprocess that imports modelopt from ``tree``; the results as dicts."""
    env = dict(os.environ, **{TREE_ENV: str(tree)})
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    spec = json.dumps([list(c) for c in cells])
    cmd = [sys.executable, "-m", "modelopt_fork.matrix.worker", "--device", device, "--out", str(out_dir),
           "--stages", ",".join(stages), "--cells", spec]
    results = []
    # cwd: `python -m` puts the working directory first on sys.path, which must not be a
    # checkout with its own modelopt/. stderr goes to a file (a pipe could fill and block).
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(out_dir) / "worker.log"
    with open(log_path, "w") as log_file, subprocess.Popen(
            cmd, env=env, cwd=out_dir, stdout=subprocess.PIPE, stderr=log_file, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("CELL "):
                r = json.loads(line[5:])
                results.append(r)
                if on_result:
                    on_result(r)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-6:])
        raise ForkError(f"matrix worker for {tree} exited {proc.returncode}:\n{tail}")
    return results
