"""The report's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils import atomic_path  # noqa: E402

SETTING_ORDER = ("cold", "warm", "overall")
# one colour and line style per method, the same in every figure
STYLE = {"backbone": ("#7f7f7f", "--"), "random": ("#bcbd22", ":"), "knn": ("#17becf", "-."),
         "prior": ("#1f77b4", "-."), "coldllm": ("#d62728", "-")}
DPI = 100


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, Any], path: Path, title: str) -> Path:
    """Recall@K (top row) and NDCG@K (bottom row) against K, one panel per setting."""
    ks = curves["ks"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.6), sharex=True)
    for col, setting in enumerate(SETTING_ORDER):
        for row, metric in enumerate(("recall", "ndcg")):
            ax = axes[row, col]
            for name, entry in curves["methods"].items():
                color, dash = STYLE.get(name, (None, "-"))
                ax.plot(ks, entry[setting][metric], dash, color=color, lw=2 if name == "coldllm" else 1.5,
                        label=entry["label"])
            lines = [np.asarray(e[setting][metric]) for e in curves["methods"].values()]
            if len(lines) > 1 and all(np.allclose(line, lines[0], rtol=0, atol=1e-9) for line in lines):
                # e.g. warm items that every method leaves at the backbone's embeddings
                ax.text(0.97, 0.05, f"all {len(lines)} methods coincide", transform=ax.transAxes,
                        ha="right", fontsize=9, color="#555555")
            users = next(iter(curves["methods"].values()))[setting]["users"]
            if row == 0:
                ax.set_title(f"{setting} ({users:,} users)")
            ax.set_ylabel(f"{'Recall' if metric == 'recall' else 'NDCG'}@K")
            ax.axvline(20, color="#dddddd", lw=0.8, zorder=0)
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
            if row == 1:
                ax.set_xlabel("K")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def plot_funnel(steps: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Pairs at each step of the funnel (log scale, real ones inside) and the share that is real."""
    names = [s["step"] for s in steps]
    x = np.arange(len(steps))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(x, [s["pairs"] for s in steps], color="#c7c7c7", label="pairs")
    left.bar(x, [s["real"] for s in steps], width=0.5, color="#d62728", label="real held-out interactions")
    left.set_yscale("log")
    left.set_xticks(x, names)
    left.set_ylabel("pairs (log scale)")
    left.legend(frameon=False, fontsize=9)
    for i, s in enumerate(steps):
        left.annotate(f"{s['pairs']:,}", (i, s["pairs"]), ha="center", va="bottom", fontsize=8)
        if s["real"]:
            left.annotate(f"{s['real']:,}", (i, s["real"]), ha="center", va="bottom", fontsize=8, color="#d62728")
    shares = [100 * s["share_real"] for s in steps]
    right.bar(x, shares, color="#d62728")
    right.set_xticks(x, names)
    right.set_ylabel("share of pairs that are real (%)")
    right.set_ylim(0, max(shares) * 1.3 if max(shares) > 0 else 1)
    for i, s in enumerate(steps):
        right.annotate(f"{100 * s['share_real']:.2f}%\nkeeps {100 * s['coverage']:.0f}% of real",
                       (i, shares[i]), ha="center", va="bottom", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_judge(scores: dict[str, Any], path: Path, title: str, xlabel: str,
               threshold: float | None = None) -> Path:
    """Histograms (as densities: the real pairs are a small minority) of the judge's scores."""
    fig, ax = plt.subplots(figsize=(7, 4))
    both = np.concatenate([scores["real"], scores["other"]])
    low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1, 41)
    for key, color, name in (("other", "#7f7f7f", "other candidate pairs"), ("real", "#d62728", "real held-out pairs")):
        values = scores[key]
        if len(values):
            ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.45, color=color,
                    edgecolor=color, label=f"{name} ({len(values):,})")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=1, ls="--", label=f"acceptance threshold {threshold:.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(f"{title}\nAUC real vs other {scores['auc']:.3f}, {100 * scores['accept_rate']:.0f}% accepted",
                 fontsize=11)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_stages(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Wall time (log scale) and peak resident memory of each stage; reused stages hatched."""
    rows = [r for r in rows if r["seconds"] is not None]
    names = [r["stage"] + (" (reused)" if r["reused_from"] else " (skipped)" if r["skipped"] else "") for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.4 * len(rows) + 1.6), sharey=True)
    hatch = ["//" if r["reused_from"] else "" for r in rows]
    seconds = [max(r["seconds"], 0.01) for r in rows]  # a log axis has no zero
    left.barh(y, seconds, color="#1f77b4", hatch=hatch, edgecolor="white")
    left.set_xscale("log")
    left.set_yticks(y, names)
    left.set_xlabel("wall time (s, log scale)")
    for yi, r in zip(y, rows):
        left.annotate(f" {r['seconds']:,.1f} s", (max(r["seconds"], 0.01), yi), va="center", fontsize=8)
    left.set_xlim(right=max(seconds) * 8)
    memory = [r["peak_memory_mb"] or 0 for r in rows]
    right.barh(y, memory, color="#ff7f0e", hatch=hatch, edgecolor="white")
    right.set_xlabel("peak resident memory of the process (MB)")
    right.set_xlim(right=max(memory) * 1.2 if max(memory) > 0 else 1)
    for yi, m in zip(y, memory):
        right.annotate(f" {m:,.0f}", (m, yi), va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
