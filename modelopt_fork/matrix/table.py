"""Format matrix results: one row per (architecture, scenario), one column per config.

A cell reads ``pass`` or ``FAIL <stage> [n]``; note ``[n]`` below the table gives the
failure's first line. Both plain text and Markdown.
"""

from __future__ import annotations

from .axes import SHORT


def format_table(results: list[dict], *, title: str = "", markdown: bool = False) -> str:
    configs = list(dict.fromkeys(r["cfg"] for r in results))
    rows = list(dict.fromkeys((r["arch"], r["scenario"]) for r in results))
    by_key = {(r["arch"], r["scenario"], r["cfg"]): r for r in results}
    notes: dict[str, int] = {}

    def cell(r):
        if r is None:
            return "-"
        if r["ok"]:
            return "pass"
        n = notes.setdefault(r["error"], len(notes) + 1)
        return f"FAIL {r['stage']} [{n}]"

    header = ["architecture", "scenario", *[SHORT.get(c, c) for c in configs]]
    body = [[a, s, *[cell(by_key.get((a, s, c))) for c in configs]] for a, s in rows]
    lines = [title] if title else []
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
        fmt = "  ".join(f"{{:{w}}}" for w in widths)
        lines += [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
        lines += [fmt.format(*row) for row in body]
    passed = sum(r["ok"] for r in results)
    lines.append(f"\n{passed}/{len(results)} cells pass" if markdown else f"{passed}/{len(results)} cells pass")
    for err, n in notes.items():
        lines.append(f"{'- ' if markdown else ''}[{n}] {err}")
    return "\n".join(lines)
