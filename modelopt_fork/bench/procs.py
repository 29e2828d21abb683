"""Run a benchmark worker in a subprocess with the fork's or a pristine upstream ``modelopt``.

The worker prints one ``RESULT {json}`` line per measurement; everything else it prints goes
to a log file. Its working directory is outside the checkout (``python`` puts the script's
directory first on ``sys.path``, never the working directory, but relative ``PYTHONPATH``
entries would resolve against it, so they are made absolute first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

TREE_ENV = "MODELOPT_FORK_TREE"
PREFIX = "RESULT "
PROGRESS = "PROGRESS "
# NVLink multicast stays off in every worker (shared GPU hosts: a program using it can take the
# host's GPUs out of service); set explicitly, whatever the parent's environment says.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def absolute_pythonpath(value: str | None, cwd: Path) -> list[str]:
    """``PYTHONPATH`` entries made absolute against ``cwd`` (an empty entry means ``cwd``)."""
    if not value:
        return []
    out = []
    for entry in value.split(os.pathsep):
        p = Path(entry or ".")
        out.append(str(p if p.is_absolute() else (Path(cwd) / p).resolve()))
    return out


def worker_env(root: Path, tree: Path | None = None, *, base: dict | None = None, cwd: Path | None = None) -> dict:
    """Environment of a worker: ``modelopt`` from ``tree`` (pristine upstream) or from ``root`` (the fork).

    ``root`` stays on the path in both cases, for ``modelopt_fork`` (the twin builder). NVLink
    multicast is switched off (:data:`NO_MULTICAST`).
    """
    env = dict(os.environ if base is None else base)
    env.pop(TREE_ENV, None)
    env.update(NO_MULTICAST)
    first = [str(Path(tree).resolve())] if tree else []
    rest = absolute_pythonpath(env.get("PYTHONPATH"), Path(cwd or os.getcwd()))
    entries = []
    for e in [*first, str(Path(root).resolve()), *rest]:
        if e not in entries:
            entries.append(e)
    env["PYTHONPATH"] = os.pathsep.join(entries)
    if tree:
        env[TREE_ENV] = str(Path(tree).resolve())
    return env


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell or a record."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:240]


def check_modelopt_origin() -> str:
    """In a worker: where ``modelopt`` comes from; exits with code 3 if not from ``$MODELOPT_FORK_TREE``."""
    import modelopt

    origin = str(Path(modelopt.__file__).resolve().parent)
    want = os.environ.get(TREE_ENV)
    if want and not Path(origin).is_relative_to(Path(want).resolve()):
        print(f"{TREE_ENV}={want} but modelopt imports from {origin}", file=sys.stderr, flush=True)
        sys.exit(3)
    return origin


def emit(record: dict) -> None:
    """In a worker: report one result to the parent."""
    print(PREFIX + json.dumps(record), flush=True)


def progress(msg: str) -> None:
    """In a worker: a line the parent echoes to its own output (and logs)."""
    print(PROGRESS + msg, flush=True)


def run_worker(
    cmd: list[str],
    *,
    env: dict,
    cwd: Path,
    log_path: Path,
    on_result: Callable[[dict], None],
    timeout: float | None = None,
) -> tuple[int | None, str]:
    """Run ``cmd``; call ``on_result`` for each ``RESULT`` line as it arrives, echo ``PROGRESS`` lines.

    Returns (exit code, or None when killed at ``timeout`` seconds; the last lines of the
    log). Never raises for the worker's own failure: the caller records it.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        killed = threading.Event()

        def kill():
            # SIGTERM first: torchrun passes it on to its ranks; the worker stays in our process
            # group, so whatever kills this script (a time limit) takes the worker with it.
            killed.set()
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:
                if line.startswith(PREFIX):
                    on_result(json.loads(line[len(PREFIX) :]))
                    continue
                if line.startswith(PROGRESS):
                    print("  " + line[len(PROGRESS) :].rstrip(), flush=True)
                log.write(line)
                log.flush()
            proc.wait()
        finally:
            if timer:
                timer.cancel()
    return (None if killed.is_set() else proc.returncode), tail(log_path)


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
