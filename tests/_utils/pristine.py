"""Pristine upstream functions, for differential tests against the fork.

The materializer keeps the unpatched wheel tree (.modelopt-fork/pristine/...).
A function is taken from that tree's source file with :mod:`ast` and executed
in a copy of the *fork* module's namespace, so it runs exactly the upstream
code of that one function against the same helpers the fork uses.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from modelopt_fork.series.materialize import ensure_pristine
from modelopt_fork.series.pin import find_root, load_pin


def pristine_source(module_name: str) -> Path:
    root = find_root(Path(__file__))
    tree = ensure_pristine(root, load_pin(root))
    return tree / (module_name.replace(".", "/") + ".py")


def pristine_function(module_name: str, qualname: str):
    """``qualname`` ('func' or 'Class.method') from the pristine source of ``module_name``."""
    path = pristine_source(module_name)
    mod_ast = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    *outer, name = qualname.split(".")
    body = mod_ast.body
    for cls in outer:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    node = next(n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)
    node.decorator_list = [d for d in node.decorator_list if not (isinstance(d, ast.Name) and d.id == "classmethod")]
    code = compile(ast.Module(body=[node], type_ignores=[]), filename=str(path), mode="exec")
    namespace = dict(vars(importlib.import_module(module_name)))
    exec(code, namespace)
    return namespace[name]
