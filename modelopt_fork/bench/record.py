"""Benchmark results written as they arrive: ``NAME.jsonl`` (one record a line) and ``NAME.json``.

``NAME.json`` is rewritten after every record (``{"meta": ..., "records": [...]}``), so a run
cut short by a time limit still leaves everything measured so far, in both files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Recorder:
    def __init__(self, out_dir: str | Path, name: str, meta: dict | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / f"{name}.jsonl"
        self.json = self.dir / f"{name}.json"
        self.meta = dict(meta or {})
        self.records: list[dict] = []
        self.jsonl.write_text("")
        self._flush()

    def add(self, record: dict) -> dict:
        self.records.append(record)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._flush()
        return record

    def update_meta(self, **kw) -> None:
        self.meta.update(kw)
        self._flush()

    def _flush(self) -> None:
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "records": self.records}, indent=1))
        os.replace(tmp, self.json)
