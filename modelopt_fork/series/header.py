"""DEP-3 style patch headers, parsed with :mod:`email.parser`.

A patch file is ``<header>\n<diff>``: the header is RFC 822 style fields
(continuation lines start with a space) and ends where the first
``diff --git`` line begins; ``git apply`` ignores everything before it.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

REQUIRED_FIELDS = (
    "Description",
    "Author",
    "Origin",
    "Bug",
    "Forwarded",
    "Applied-Upstream",
    "Last-Update",
    "Upstream-Base",
    "Test",
)
# Fields whose DEP-3 meaning allows "none yet"; they must still be present so a
# reader sees the question was asked.
MAY_BE_NONE = {"Bug", "Applied-Upstream"}

_DIFF_START = re.compile(r"^diff --git ", re.M)
_URL = re.compile(r"^https?://\S+$")


@dataclass(frozen=True)
class PatchFile:
    name: str
    header_text: str
    diff_text: str
    fields: Message

    def get(self, field: str) -> str:
        value = self.fields.get(field)
        return "" if value is None else " ".join(str(value).split())

    @property
    def tests(self) -> list[str]:
        return self.get("Test").split()

    @property
    def description(self) -> str:
        return self.get("Description")


def split_patch(text: str) -> tuple[str, str]:
    m = _DIFF_START.search(text)
    if m is None:
        return text, ""
    return text[: m.start()], text[m.start() :]


def parse_patch(name: str, text: str) -> PatchFile:
    header, diff = split_patch(text)
    fields = HeaderParser(policy=compat32).parsestr(header, headersonly=True)
    return PatchFile(name, header, diff, fields)


def header_problems(patch: PatchFile, upstream_requirement: str) -> list[str]:
    """What is wrong with a patch header (empty list = fine)."""
    p = []
    where = f"patches/{patch.name}"
    defects = [d for d in patch.fields.defects]
    if defects:
        p.append(f"{where}: header does not parse: {defects[0]}")
    for f in REQUIRED_FIELDS:
        if patch.fields.get(f) is None:
            p.append(f"{where}: header field {f} is missing")
        elif not patch.get(f) and f not in MAY_BE_NONE:
            p.append(f"{where}: header field {f} is empty")
        elif "TODO" in patch.get(f):
            p.append(f"{where}: header field {f} still has a TODO from the template")
    for f in patch.fields.keys():
        if len(patch.fields.get_all(f)) > 1:
            p.append(f"{where}: header field {f} appears more than once")
    fwd = patch.get("Forwarded")
    if fwd and fwd not in ("no", "not-needed") and not _URL.match(fwd):
        p.append(f"{where}: Forwarded must be a URL, 'no' or 'not-needed', got {fwd!r}")
    lu = patch.get("Last-Update")
    if lu:
        try:
            _dt.date.fromisoformat(lu)
        except ValueError:
            p.append(f"{where}: Last-Update must be YYYY-MM-DD, got {lu!r}")
    base = patch.get("Upstream-Base")
    if base and base != upstream_requirement:
        p.append(f"{where}: Upstream-Base is {base!r} but UPSTREAM.toml pins {upstream_requirement!r}")
    if not patch.diff_text:
        p.append(f"{where}: no 'diff --git' section")
    return p


def header_template(upstream_requirement: str, author: str, today: _dt.date | None = None) -> str:
    today = today or _dt.date.today()
    return (
        "Description: TODO one line saying what this changes\n"
        " TODO: why (the failure it fixes, with the error message), and why the fix is safe.\n"
        f"Author: {author}\n"
        "Origin: vendor\n"
        "Bug: \n"
        "Forwarded: no\n"
        "Applied-Upstream: \n"
        f"Last-Update: {today.isoformat()}\n"
        f"Upstream-Base: {upstream_requirement}\n"
        "Test: TODO tests/path/test_file.py::test_name\n"
        "\n"
    )


def set_field(header_text: str, field: str, value: str) -> str:
    """``header_text`` with ``field`` set to the one-line ``value``; every other byte is kept.

    The field's continuation lines go with it; a missing field is added after the last field.
    """
    lines = header_text.splitlines(keepends=True)
    out, i, done = [], 0, False
    while i < len(lines):
        if not done and lines[i].split(":", 1)[0] == field and ":" in lines[i]:
            out.append(f"{field}: {value}\n")
            i += 1
            while i < len(lines) and lines[i][:1] in (" ", "\t") and lines[i].strip():
                i += 1
            done = True
            continue
        out.append(lines[i])
        i += 1
    if not done:
        last = max((j for j, ln in enumerate(out) if ln.strip()), default=-1)
        out.insert(last + 1, f"{field}: {value}\n")
    return "".join(out)
