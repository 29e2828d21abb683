"""`modelopt-fork upstream-suite`: upstream's own tests against pristine upstream and the fork.

``--source DIR`` is an upstream Model-Optimizer checkout (the user's; nothing of it is kept
here). For each side a temporary copy is made of DIR's ``tests/`` and ``pyproject.toml`` (so
pytest reads upstream's ini: ``pythonpath = ["tests/"]`` for ``_test_utils``; its ``addopts``
are dropped, they need plugins upstream's dev extra installs), with the series' upstream-style
tests (the materialized ``upstream_tests/``, in upstream's layout) laid over it on both sides:
they are the "patch tests", red on pristine and green on the fork. DIR's own ``modelopt/`` is
never imported: each side's pytest runs in its copy with ``modelopt`` from the side's tree.

The mechanism is the one the benchmarks and red/green use: the tree goes first on
``PYTHONPATH`` with ``MODELOPT_FORK_TREE`` set (:func:`modelopt_fork.bench.procs.worker_env`),
and the checkout's root ``conftest.py`` is copied into the copy's root, where it puts the tree
first on ``sys.path`` and refuses to start if ``modelopt`` would come from elsewhere. Pristine is
the verified pristine cache (the wheel unpacked, 0 patches); the fork is the checkout's
materialized tree.

Outcomes come from junit XML (xunit1) per test id. A regression is an id that passes on
pristine and does not pass on the fork (failed, error, skipped or missing there); a patch test
that does not pass or skip on the fork is a failure too. Both make the exit status 1.

``--gpu``: upstream's GPU dirs, one pytest process per test file (xdist collects parametrized
ids differently there), no ``-n``. ``--coverage`` (fork side): which statements the patches add
are executed (see :func:`patch_statements`).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..bench.procs import run_worker, worker_env
from .diff import patched_files
from .errors import ForkError
from .header import parse_patch
from .materialize import ensure_pristine, materialize
from .pin import load_pin
from .redgreen import _last_raised, _testcases
from .seriesfile import load_series
from .tree import UPSTREAM_TESTS_DIR

PASSED, FAILED, ERROR, SKIPPED, XFAILED, MISSING = "passed", "failed", "error", "skipped", "xfailed", "missing"
SOURCE_FILES = ("pyproject.toml", "pytest.ini", "setup.cfg")  # where upstream's pytest ini may live
KINDS = ("unit", "gpu")
GUARD = "conftest.py"  # the checkout's root conftest: tree first on sys.path, origin checked


@dataclass
class Item:
    outcome: str
    message: str = ""


@dataclass
class Side:
    label: str
    tree: Path
    items: dict[str, Item] = field(default_factory=dict)
    files_timed_out: list[str] = field(default_factory=list)
    seconds: float = 0.0
    modelopt_from: str = ""

    def counts(self) -> Counter:
        return Counter(i.outcome for i in self.items.values())


# --- which tests ------------------------------------------------------------------------------------

def series_files(root: Path) -> dict[str, list[str]]:
    """Patch name -> the paths (upstream layout) it adds or modifies."""
    series = load_series(root)
    return {n: [f.path for f in patched_files(parse_patch(n, series.path(n).read_text(encoding="utf-8")).diff_text)
                if not f.is_removed_file] for n in series.names}


def touched_modules(root: Path) -> list[str]:
    """The modelopt modules the series changes: ``torch/export`` for modelopt/torch/export/..., ``onnx`` for
    modelopt/onnx/... (upstream keeps their tests in tests/unit/<module> and tests/gpu/<module>)."""
    pin = load_pin(root)
    out = set()
    for files in series_files(root).values():
        for f in files:
            parts = Path(f).parts
            if parts[0] not in pin.packages or len(parts) < 3:
                continue
            out.add("/".join(parts[1:3]) if parts[1] == "torch" and len(parts) > 3 else parts[1])
    return sorted(out)


def default_paths(root: Path, source: Path, *, gpu: bool) -> list[str]:
    """Upstream's test dirs of the touched modules that ``source`` has (tests/unit/... or tests/gpu/...)."""
    kind = "gpu" if gpu else "unit"
    return [p for m in touched_modules(root) if (Path(source) / (p := f"tests/{kind}/{m}")).is_dir()]


def prepare_copy(root: Path, source: Path, dest: Path) -> list[str]:
    """``dest``: DIR's tests/ and pytest ini, the series' upstream-style tests over it, the tree guard.

    Returns the overlaid files (``tests/...`` paths)."""
    source = Path(source)
    if not (source / "tests").is_dir():
        raise ForkError(f"--source {source}: no tests/ directory (an upstream Model-Optimizer checkout is needed)")
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(source / "tests", dest / "tests", ignore=ignore)
    for name in SOURCE_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
    overlay = []
    ours = Path(root) / UPSTREAM_TESTS_DIR
    if ours.is_dir():
        for p in sorted(ours.rglob("*")):
            rel = p.relative_to(ours)
            if p.is_file() and "__pycache__" not in rel.parts and p.suffix != ".pyc":
                (dest / "tests" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest / "tests" / rel)
                overlay.append(f"tests/{rel.as_posix()}")
    shutil.copyfile(guard_conftest(root), dest / GUARD)
    return overlay


def guard_conftest(root: Path) -> Path:
    """The root conftest.py that enforces ``MODELOPT_FORK_TREE``: the checkout's, else the tooling's own."""
    for cand in (Path(root) / GUARD, Path(__file__).resolve().parents[2] / GUARD):
        if cand.is_file() and "MODELOPT_FORK_TREE" in cand.read_text(encoding="utf-8"):
            return cand
    raise ForkError(f"{root}: no {GUARD} that enforces MODELOPT_FORK_TREE (the fork checkout's root conftest)")


def test_files(copy: Path, paths: list[str]) -> list[str]:
    """The test files (``test_*.py``, ``*_test.py``) under ``paths`` of the copy, sorted."""
    out = set()
    for p in paths:
        base = copy / p
        if base.is_file():
            out.add(p)
            continue
        for f in base.rglob("*.py"):
            if "__pycache__" not in f.parts and (f.name.startswith("test_") or f.name.endswith("_test.py")):
                out.add(f.relative_to(copy).as_posix())
    return sorted(out)


# --- junit -> outcome per id ---------------------------------------------------------------------------

def nodeid(case, copy: Path) -> str:
    """The pytest id of a junit (xunit1) ``testcase``: its dotted classname resolved against the files in
    ``copy`` (the ``file`` attribute names where the function is defined, which for an inherited test is
    another module). A collection error (empty classname) is the file's path."""
    classname, name = case.get("classname", ""), case.get("name", "")
    dotted, tail = (classname, [name]) if classname else (name, [])
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        stem = "/".join(parts[:k])
        if (copy / f"{stem}.py").is_file() or (not tail and k == len(parts) and (copy / stem).exists()):
            path = f"{stem}.py" if (copy / f"{stem}.py").is_file() else stem
            return "::".join([path, *parts[k:], *tail])
    file = case.get("file") or "/".join(parts) + ".py"
    return "::".join([file, *tail])


def outcome_of(case) -> Item:
    """passed / failed / error / skipped / xfailed of one junit ``testcase`` (the worst child wins)."""
    kind, message = PASSED, ""
    rank = {PASSED: 0, SKIPPED: 1, XFAILED: 1, FAILED: 2, ERROR: 3}
    for child in case:
        if child.tag == "failure":
            got = FAILED
        elif child.tag == "error":
            got = ERROR
        elif child.tag == "skipped":
            got = XFAILED if child.get("type") == "pytest.xfail" else SKIPPED
        else:
            continue
        text = (child.get("message") or "").strip()
        if text == "collection failure":
            text = "collection error: " + (_last_raised((child.text or "").splitlines()) or "?")
        if rank[got] > rank[kind]:
            kind, message = got, text
    return Item(kind, message[:300])


def read_junit(xml: Path, copy: Path) -> dict[str, Item]:
    out: dict[str, Item] = {}
    for case in _testcases(xml):
        tid, item = nodeid(case, copy), outcome_of(case)
        if tid in out and out[tid].outcome != PASSED:  # a teardown error reported next to the call
            continue
        out[tid] = item
    return out


# --- running a side -------------------------------------------------------------------------------------

COVERAGE_RC = """[run]
data_file = {data}
parallel = true
patch = subprocess
dynamic_context = test_function
include =
{include}
"""


def _pytest_cmd(xml: Path, args: list[str], workers: str | None, coverage_rc: Path | None) -> list[str]:
    head = [sys.executable, "-m"]
    if coverage_rc is not None:
        head += ["coverage", "run", f"--rcfile={coverage_rc}", "-m"]
    cmd = [*head, "pytest", "-q", "-rN", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "junit_family=xunit1",
           "--continue-on-collection-errors", f"--junitxml={xml}"]
    if workers and workers != "0":
        cmd += ["-n", workers]
    return cmd + args


def run_side(root: Path, side: Side, copy: Path, paths: list[str], work: Path, *, per_file: bool, workers: str | None,
             jobs: int = 1, timeout: float | None = None, coverage_rc: Path | None = None, log=print) -> Side:
    """Run ``paths`` of ``copy`` with ``modelopt`` from ``side.tree``; fills ``side.items``."""
    env = worker_env(root, side.tree, cwd=Path.cwd())
    probe = subprocess.run([sys.executable, "-c", "import modelopt, sys; sys.stdout.write(modelopt.__file__)"],
                           env=env, cwd=copy, capture_output=True, text=True)
    got = probe.stdout.strip()
    side.modelopt_from = str(Path(got).parent) if got else "import failed: " + (
        probe.stderr.strip().splitlines() or ["?"])[-1]
    if probe.returncode != 0 or Path(got).resolve() != (Path(side.tree) / "modelopt" / "__init__.py").resolve():
        raise ForkError(f"{side.label}: modelopt imports from {side.modelopt_from}, not from {side.tree}")
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    groups = [[f] for f in test_files(copy, paths)] if per_file else [paths]
    if per_file:
        workers = None

    def one(i_args):
        i, args = i_args
        xml, log_path = work / f"junit-{i:04d}.xml", work / f"pytest-{i:04d}.log"
        rc, tail = run_worker(_pytest_cmd(xml, args, workers, coverage_rc), env=env, cwd=copy, log_path=log_path,
                              on_result=lambda _r: None, timeout=timeout)
        got = read_junit(xml, copy)
        if rc is None:  # killed at the time limit: what it reported stays, the file counts as an error
            side.files_timed_out.extend(args)
            for a in args:
                got.setdefault(a, Item(ERROR, f"timed out after {timeout:.0f} s (the whole file's process)"))
        elif not got and rc != 5:  # 5: nothing collected (a test_*.py without tests): no ids, no error
            last = (tail.splitlines() or ["?"])[-1]
            for a in args:
                got[a] = Item(ERROR, f"pytest exit {rc} and no junit report: {last}")
        if per_file:
            log(f"  {side.label}: {args[0]}: {dict(Counter(i.outcome for i in got.values()))}")
        return got

    with ThreadPoolExecutor(max_workers=max(1, jobs if per_file else 1)) as pool:
        for got in pool.map(one, enumerate(groups)):
            side.items.update(got)
    side.seconds = time.monotonic() - start
    return side


# --- comparison ----------------------------------------------------------------------------------------

@dataclass
class Comparison:
    regressions: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    fork_only: list[str] = field(default_factory=list)
    pristine_only: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # another not-passing outcome on each side
    same: Counter = field(default_factory=Counter)
    patch_tests: list[str] = field(default_factory=list)
    patch_tests_failing: list[str] = field(default_factory=list)  # not passed/skipped on the fork


def is_patch_test(tid: str, overlay: list[str]) -> bool:
    return tid.split("::", 1)[0] in overlay


def compare(pristine: dict[str, Item], fork: dict[str, Item], overlay: list[str]) -> Comparison:
    c = Comparison()
    for tid in sorted(set(pristine) | set(fork)):
        p = pristine.get(tid, Item(MISSING)).outcome
        f = fork.get(tid, Item(MISSING)).outcome
        if is_patch_test(tid, overlay):
            c.patch_tests.append(tid)
            # a file id (a collection error on pristine) is missing where the fork collects the file's tests
            collected = f == MISSING and "::" not in tid and any(k.startswith(tid + "::") for k in fork)
            if f not in (PASSED, SKIPPED) and not collected:
                c.patch_tests_failing.append(tid)
        elif p == PASSED and f != PASSED:
            c.regressions.append(tid)
        elif f == PASSED and p != PASSED:
            (c.fork_only if p == MISSING else c.fixed).append(tid)
        elif p == f:
            c.same[p] += 1
        elif f == MISSING:
            c.pristine_only.append(tid)
        elif p == MISSING:
            c.fork_only.append(tid)
        else:
            c.changed.append(tid)
    return c


# --- patch coverage -------------------------------------------------------------------------------------

def _function_body_lines(text: str) -> set[int]:
    """Lines inside a function body (not the ``def`` line, its decorators or its signature)."""
    out: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                out.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return out


def line_owners(root: Path, pristine: Path, tops: tuple[str, ...] = ("modelopt",)) -> dict[str, list[str | None]]:
    """For each file the series changes under ``tops``: the patch that added each line of its final form
    (None for upstream's lines). Each patch's hunks are replayed in series order on (owner, text) lines,
    so a line a later patch moves keeps its owner and one it rewrites gets the later patch; the replayed
    text is checked against the checkout's materialized file."""
    series = load_series(root)
    state: dict[str, list[tuple[str | None, str]]] = {}
    for name in series.names:
        for pf in patched_files(parse_patch(name, series.path(name).read_text(encoding="utf-8")).diff_text):
            if Path(pf.path).parts[0] not in tops:
                continue
            if pf.path not in state:
                src = Path(pristine) / pf.path
                state[pf.path] = [(None, ln) for ln in src.read_text(encoding="utf-8").splitlines()] \
                    if src.is_file() and not pf.is_added_file else []
            if pf.is_removed_file:
                state[pf.path] = []
                continue
            old, new, pos = state[pf.path], [], 0
            for hunk in pf:
                start = max(hunk.source_start - 1, 0) if hunk.source_length else hunk.source_start
                new.extend(old[pos:start])
                pos = start
                for line in hunk:
                    if line.is_context:
                        new.append(old[pos])
                        pos += 1
                    elif line.is_removed:
                        pos += 1
                    elif line.is_added:
                        new.append((name, line.value.rstrip("\n")))
            new.extend(old[pos:])
            state[pf.path] = new
    owners = {}
    for path, lines in state.items():
        final = Path(root) / path
        if not final.is_file():
            continue
        if [t for _, t in lines] != final.read_text(encoding="utf-8").splitlines():
            raise ForkError(f"{path}: replaying the series' hunks does not give the materialized file")
        owners[path] = [o for o, _ in lines]
    return owners


@dataclass
class PatchCoverage:
    patch: str
    body_added: int = 0  # statements the patch adds inside function bodies
    body_run: int = 0
    body_run_upstream: int = 0  # ... executed by upstream's own tests (not the overlaid patch tests)
    all_added: int = 0  # every statement the patch adds (module level too: imports, defs)
    all_run: int = 0


def patch_coverage(root: Path, pristine: Path, data_file: Path, overlay: list[str]) -> list[PatchCoverage]:
    """Per patch: the statements it adds in modelopt/ (coverage's executable statements whose first line
    the patch owns, :func:`line_owners`) and how many ran; contexts tell upstream's tests from ours."""
    import coverage

    owners = line_owners(root, pristine)
    cov = coverage.Coverage(data_file=str(data_file))
    cov.combine(data_paths=[str(data_file.parent)], strict=False)
    cov.load()
    data = cov.get_data()
    # a context is "module.qualname" of the test; pytest imports a test file outside a package under its
    # basename (rootdir import mode "prepend"), in a package under its dotted path
    overlay_modules = {o.removesuffix(".py").replace("/", ".") for o in overlay} | {
        Path(o).stem for o in overlay}
    rows = {n: PatchCoverage(n) for n in load_series(root).names}
    for path, owner in owners.items():
        if not path.endswith(".py"):
            continue
        full = str((Path(root) / path).resolve())
        _, statements, _, missing, _ = cov.analysis2(full)
        executed = set(statements) - set(missing)
        by_ctx = data.contexts_by_lineno(full) or {}
        body = _function_body_lines((Path(root) / path).read_text(encoding="utf-8"))
        for ln in statements:
            patch = owner[ln - 1] if ln - 1 < len(owner) else None
            if patch is None:
                continue
            r = rows[patch]
            r.all_added += 1
            r.all_run += ln in executed
            if ln in body:
                r.body_added += 1
                r.body_run += ln in executed
                ctxs = [c for c in by_ctx.get(ln, []) if c]
                r.body_run_upstream += any(not any(c.startswith(m + ".") for m in overlay_modules) for c in ctxs)
    return list(rows.values())


# --- the whole run -------------------------------------------------------------------------------------

@dataclass
class SuiteResult:
    source: Path
    source_commit: str
    paths: list[str]
    overlay: list[str]
    pristine: Side
    fork: Side
    comparison: Comparison
    coverage: list[PatchCoverage] | None = None

    @property
    def ok(self) -> bool:
        return not self.comparison.regressions and not self.comparison.patch_tests_failing


def source_commit(source: Path) -> str:
    """The checkout's commit: ``git rev-parse HEAD`` there, else a ``.source-commit`` file (a ``git archive``
    extract has no .git), else "unknown"."""
    try:  # only a repository whose top is ``source`` itself (not one that happens to contain it)
        p = subprocess.run(["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                           text=True)
        top, _, commit = p.stdout.strip().partition("\n")
        if p.returncode == 0 and commit and Path(top).resolve() == Path(source).resolve():
            return commit.strip()
    except OSError:
        pass
    marker = Path(source) / ".source-commit"
    return marker.read_text().strip() if marker.is_file() else "unknown"


def upstream_suite(root: Path, source: Path, *, paths: list[str] | None = None, gpu: bool = False,
                   coverage: bool = False, workers: str | None = "auto", jobs: int = 1,
                   timeout: float | None = None, sides: tuple[str, ...] = ("pristine", "fork"),
                   pristine_tree: Path | None = None, pristine_from: Path | None = None, out: Path | None = None,
                   log=print) -> SuiteResult:
    """Run upstream's tests (``paths`` of ``source``; default :func:`default_paths`) on pristine and the fork.

    ``pristine_from``: an ``upstream-suite.json`` of an earlier ``sides=("pristine",)`` run on the same
    paths, whose pristine outcomes stand in for running that side (a GPU run split into two calls).
    ``out``: the reports, and each side's work dir (per-file junit and logs, kept as they are written:
    what a killed run had finished stays there)."""
    root, source = Path(root).resolve(), Path(source).resolve()
    pin = load_pin(root)
    paths = list(paths or default_paths(root, source, gpu=gpu))
    if not paths:
        raise ForkError(f"--source {source}: none of the test dirs of the modules the series touches "
                        f"({', '.join(touched_modules(root))}) is there; name them with --paths")
    materialize(root, log=log)  # the fork side: the checkout, up to date with the series
    pristine = Path(pristine_tree).resolve() if pristine_tree else ensure_pristine(root, pin, log)
    if not (pristine / "modelopt").is_dir():
        raise ForkError(f"{pristine}: no modelopt/ (a pristine tree holds the wheel's modelopt/)")
    with tempfile.TemporaryDirectory(prefix="upstream-suite-") as tmp:
        tmp = Path(tmp)
        result_sides = {"pristine": Side("pristine", pristine), "fork": Side("fork", root)}
        if pristine_from is not None:
            result_sides["pristine"] = load_side(Path(pristine_from), "pristine", paths)
            sides = tuple(s for s in sides if s != "pristine")
        overlay: list[str] = []
        cov_data = None
        for name in sides:
            side = result_sides[name]
            copy = tmp / f"src-{name}"
            overlay = prepare_copy(root, source, copy)
            missing = [p for p in paths if not (copy / p).exists()]
            if missing:
                raise ForkError(f"--source {source}: no {', '.join(missing)} (nor in the series' upstream-style tests)")
            rc = None
            if coverage and name == "fork":
                cov_data = tmp / "coverage" / ".coverage"
                cov_data.parent.mkdir()
                include = sorted({str((root / f).resolve()) for fs in series_files(root).values() for f in fs
                                  if f.startswith(f"{pin.packages[0]}/") and f.endswith(".py")})
                rc = tmp / "coveragerc"
                rc.write_text(COVERAGE_RC.format(data=cov_data, include="\n".join(f"    {i}" for i in include)))
            log(f"upstream-suite: {name}: {len(paths)} path(s) with modelopt from {side.tree}"
                + (" (one process per file)" if gpu else ""))
            work = (Path(out) if out is not None else tmp) / f"work-{name}"
            shutil.rmtree(work, ignore_errors=True)
            run_side(root, side, copy, paths, work, per_file=gpu, workers=workers, jobs=jobs,
                     timeout=timeout, coverage_rc=rc, log=log)
            log(f"upstream-suite: {name}: {dict(side.counts())} in {side.seconds:.0f} s")
            if out is not None:
                _keep_reports(work, Path(out), name)
        cov_rows = patch_coverage(root, pristine, cov_data, overlay) if cov_data is not None else None
        # a pristine-only run (the first of a split GPU run) compares nothing; a fork-only one still checks
        # the patch tests
        comparison = compare(result_sides["pristine"].items, result_sides["fork"].items, overlay) \
            if "fork" in sides else Comparison()
        res = SuiteResult(source, source_commit(source), paths, overlay, result_sides["pristine"],
                          result_sides["fork"], comparison, cov_rows)
        if out is not None:
            write_json(res, Path(out) / "upstream-suite.json")
        return res


def load_side(path: Path, label: str, paths: list[str]) -> Side:
    """Side ``label`` of an ``upstream-suite.json`` (:func:`write_json`), which must be of ``paths``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        got = doc["sides"][label]
    except (OSError, ValueError, KeyError) as e:
        raise ForkError(f"{path}: no {label} side of an upstream-suite run ({e})") from e
    if doc.get("paths") != paths:
        raise ForkError(f"{path}: its {label} side ran {doc.get('paths')}, this run is of {paths}")
    side = Side(label, Path(got["tree"]), {k: Item(*v) for k, v in got["items"].items()},
                list(got.get("timed_out_files", [])), float(got.get("seconds", 0)), got.get("modelopt_from", ""))
    return side


def _keep_reports(work: Path, out: Path, side: str) -> None:
    """The side's junit reports, merged into one file, and its pytest logs, concatenated."""
    out.mkdir(parents=True, exist_ok=True)
    suites = ET.Element("testsuites")
    for xml in sorted(work.glob("junit-*.xml")):
        try:
            suites.extend(ET.parse(xml).getroot())
        except ET.ParseError:
            continue
    ET.ElementTree(suites).write(out / f"junit-{side}.xml", encoding="utf-8", xml_declaration=True)
    with open(out / f"pytest-{side}.log", "w", encoding="utf-8") as f:
        for log in sorted(work.glob("pytest-*.log")):
            f.write(f"==== {log.name}\n{log.read_text(errors='replace')}\n")


def write_json(res: SuiteResult, path: Path) -> None:
    c = res.comparison
    doc = {
        "source": str(res.source), "source_commit": res.source_commit, "paths": res.paths, "overlay": res.overlay,
        "sides": {s.label: {"tree": str(s.tree), "modelopt_from": s.modelopt_from, "seconds": round(s.seconds, 1),
                            "counts": dict(s.counts()), "timed_out_files": s.files_timed_out,
                            "items": {k: [v.outcome, v.message] for k, v in sorted(s.items.items())}}
                  for s in (res.pristine, res.fork) if s.items},
        "regressions": c.regressions, "fixed": c.fixed, "fork_only": c.fork_only, "pristine_only": c.pristine_only,
        "changed": c.changed, "same": dict(c.same), "patch_tests": c.patch_tests,
        "patch_tests_failing": c.patch_tests_failing,
        "coverage": [vars(r) for r in res.coverage] if res.coverage is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _counts_text(counts: Counter) -> str:
    order = [PASSED, FAILED, ERROR, SKIPPED, XFAILED]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k]) or "nothing ran"


def format_result(res: SuiteResult) -> str:
    c = res.comparison
    p, f = res.pristine, res.fork
    lines = [f"upstream-suite: {res.source} at {res.source_commit}", f"  paths: {' '.join(res.paths)}"]
    for s in (p, f):
        if s.items:
            lines.append(f"  {s.label:8s} {len(s.items)} ids: {_counts_text(s.counts())}"
                         f"  ({s.seconds:.0f} s; modelopt from {s.modelopt_from})")
            if s.files_timed_out:
                lines.append(f"           timed out: {', '.join(s.files_timed_out)}")
    if p.items and f.items:
        lines.append(f"  same: {sum(c.same.values())} ({_counts_text(c.same)})")

        def block(title, ids, show_outcomes=True):
            lines.append(f"  {title}: {len(ids)}")
            for tid in ids:
                po, fo = p.items.get(tid, Item(MISSING)), f.items.get(tid, Item(MISSING))
                msg = fo.message or po.message
                lines.append(f"    {tid}: pristine {po.outcome}, fork {fo.outcome}"
                             + (f" -- {msg[:160]}" if msg and show_outcomes else ""))

        block("regressions (pass on pristine, not on the fork)", c.regressions)
        block("fixed (pass on the fork, not on pristine)", c.fixed)
        block("patch tests (the series' upstream-style tests)", c.patch_tests, show_outcomes=False)
        if c.patch_tests_failing:
            block("patch tests NOT passing on the fork", c.patch_tests_failing)
        block("fork only (not collected on pristine)", c.fork_only)
        block("pristine only (not collected on the fork, not passing on pristine)", c.pristine_only)
        block("changed (another not-passing outcome)", c.changed)
    if res.coverage is not None:
        lines.append("")
        lines.append(format_coverage(res.coverage))
    if p.items and f.items:
        lines.append(f"upstream-suite: {len(c.regressions)} regression(s), {len(c.fixed)} fixed, "
                     f"{len(c.patch_tests)} patch test(s) ({len(c.patch_tests_failing)} not passing on the fork)")
    return "\n".join(lines)


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "-"


def format_coverage(rows: list[PatchCoverage]) -> str:
    """Markdown table: per patch, the statements it adds in function bodies that ran (and all of them)."""
    lines = ["patch coverage on the fork side (statements the patch adds in modelopt/; body = inside functions):",
             "", "| patch | body run / added | by upstream's own tests | all run / added |", "|---|---|---|---|"]
    for r in rows:
        body = f"{r.body_run}/{r.body_added} ({_pct(r.body_run, r.body_added)})"
        name = r.patch.removesuffix(".patch")
        lines.append(f"| {name} | {body} | {r.body_run_upstream} | {r.all_run}/{r.all_added} |")
    t = PatchCoverage("total")
    for r in rows:
        for k in ("body_added", "body_run", "body_run_upstream", "all_added", "all_run"):
            setattr(t, k, getattr(t, k) + getattr(r, k))
    lines.append(f"| **total** | {t.body_run}/{t.body_added} ({_pct(t.body_run, t.body_added)}) | "
                 f"{t.body_run_upstream} ({_pct(t.body_run_upstream, t.body_added)}) | {t.all_run}/{t.all_added} "
                 f"({_pct(t.all_run, t.all_added)}) |")
    return "\n".join(lines)
