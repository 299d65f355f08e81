"""The PNG plots of ``fastvit profile`` (matplotlib, optional: ``pip install 'fastvit[plot]'``)."""
from __future__ import annotations

from pathlib import Path

from .markdown import MIB, PLOT_FILES
from .speed_cases import SPEED_BACKENDS

__all__ = ["make_plots"]


def make_plots(results: dict, out_dir) -> tuple[list[str], str | None]:
    """Draw the PNGs into ``out_dir``; returns (file names, None) or ([], why not)."""
    try:
        import matplotlib
    except ImportError:
        return [], "matplotlib is not installed: pip install 'fastvit[plot]' for the plots"
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    files = []
    if _plot_memory(plt, results, out_dir / PLOT_FILES["memory"]):
        files.append(PLOT_FILES["memory"])
    if _plot_speedup(plt, results, out_dir / PLOT_FILES["speedup"]):
        files.append(PLOT_FILES["speedup"])
    if results.get("compare") and _plot_compare(plt, results, out_dir / PLOT_FILES["compare"]):
        files.append(PLOT_FILES["compare"])
    return files, None


_COLORS = {"eager": "#d62728", "sdpa": "#1f77b4", "compile": "#9467bd", "triton": "#2ca02c"}


def _plot_memory(plt, results, path) -> bool:
    rows = [r for r in results["memory"]["rows"] if r.get("available", True) and r.get("peak_bytes")]
    if not rows:
        return False
    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        ticks, model_label = {}, "model (analytic)"
        for backend in ("eager", "sdpa", "triton"):
            rs = sorted((r for r in rows if r["mode"] == mode and r["backend"] == backend), key=lambda r: r["tokens"])
            if not rs:
                continue
            x = [r["tokens"] for r in rs]
            c = _COLORS[backend]
            ax.plot(x, [r["peak_bytes"] / MIB for r in rs], "o-", color=c, linewidth=1.2, label=f"{backend} (measured)")
            ax.plot(x, [r["model_bytes"] / MIB for r in rs], ":", color="black", alpha=0.8, linewidth=1.6,
                    marker="x", markersize=7, label=model_label)
            model_label = None
            ticks.update({r["tokens"]: r["img_size"] for r in rs})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([f"{t}\n{ticks[t]}px" for t in sorted(ticks)], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("tokens (image size)")
        ax.set_ylabel("peak MiB above inputs")
        ax.set_title(f"attention, {mode}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    plan = results["plan"]
    fig.suptitle(f"Attention peak memory vs resolution, log-log ({plan['model']}, {plan['dtype']}, "
                 f"{results['environment']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_speedup(plt, results, path) -> bool:
    rows = [r for r in results["speed"]["rows"] if r.get("available", True) and r.get("speedup_vs_eager")]
    groups = []
    for r in rows:
        key = (r["op"], r["mode"], r["img_size"])
        if key not in groups and r["backend"] != "eager":
            groups.append(key)
    backends = [b for b in SPEED_BACKENDS if b != "eager" and any(r["backend"] == b for r in rows)]
    if not groups or not backends:
        return False
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) + 2), 4.6))
    for i, b in enumerate(backends):
        xs, ys = [], []
        for j, key in enumerate(groups):
            r = next((r for r in rows if (r["op"], r["mode"], r["img_size"]) == key and r["backend"] == b), None)
            if r is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(r["speedup_vs_eager"])
        bars = ax.bar(xs, ys, width, color=_COLORS[b], label=f"{b} (measured)")
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:.2f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color=_COLORS["eager"], linestyle="--", linewidth=1, label="eager = 1")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{op}\n{mode} {size}px" for op, mode, size in groups], fontsize=8)
    ax.set_ylabel("speed-up vs eager (higher is better)")
    plan = results["plan"]
    ax.set_title(f"Measured speed-up vs eager ({results['environment']['device_name']}, {plan['dtype']})",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_compare(plt, results, path) -> bool:
    """Whole-model peak memory against pixels, log-log: the CNN and the ViT's backends on the same
    axes, one panel per mode (all measured)."""
    c = results["compare"]
    rows = [r for r in c["memory"]["rows"] if r.get("available", True) and r.get("peak_bytes")]
    modes = [m for m in ("inference", "training") if any(r["mode"] == m for r in rows)]
    if not modes:
        return False
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False)
    series = [(c["cnn"], "eager", c["cnn"], "black", "s-")] + [
        (c["vit"], b, f"{c['vit']} ({b})", _COLORS[b], "o-") for b in ("eager", "sdpa", "triton")]
    for ax, mode in zip(axes[0], modes):
        ticks = {}
        for net, backend, label, color, style in series:
            rs = sorted((r for r in rows if r["mode"] == mode and r["network"] == net and r["backend"] == backend),
                        key=lambda r: r["pixels"])
            if rs:
                ax.plot([r["pixels"] for r in rs], [r["peak_bytes"] / MIB for r in rs], style, color=color,
                        linewidth=1.2, label=f"{label} (measured)")
                ticks.update({r["pixels"]: r["img_size"] for r in rs})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([f"{ticks[t]}px" for t in sorted(ticks)], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("pixels per image (log)")
        ax.set_ylabel("peak MiB above parameters and input")
        ax.set_title(f"whole model, {mode}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    plan = results["plan"]
    fig.suptitle(f"Peak memory vs pixels, log-log: {c['vit']} against {c['cnn']} ({plan['dtype']}, "
                 f"{results['environment']['device']}, batch 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
