"""Markdown pieces every section of ``report.md`` uses (render.py, render_compare.py,
render_mixed.py): tables, MiB figures, plot references."""
from __future__ import annotations

PLOT_FILES = {"memory": "memory_vs_resolution.png", "speedup": "speedup.png",
              "compare": "vit_vs_cnn_memory.png"}
MIB = 2 ** 20


def md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x / MIB:,.{digits}f}"


def plot_ref(results: dict, key: str, caption: str) -> list[str]:
    plots = results.get("plots") or {}
    if PLOT_FILES[key] in plots.get("files", []):
        return [f"![{caption}]({PLOT_FILES[key]})", ""]
    if plots.get("note"):
        return [f"_No plot: {plots['note']}_", ""]
    return []
