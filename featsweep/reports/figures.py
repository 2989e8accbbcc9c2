"""The figures of a sweep, drawn from its runs: the hypotheses against each swept dimension
(``compare/hypotheses.png``) and the clusters followed across layers (``compare/layer_flow.png``).
The figures a run's stages make are in :mod:`featsweep.plots`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from featsweep.plots import cluster_colour  # the same cluster colours as a run's figures


# ---- sweep (compare) figures ------------------------------------------------------------


GROUP_OF = {"h1.": "H1", "network.": "H1", "h2.": "H2", "h3.": "H3", "h4.": "H4", "cooc.": "H4", "task.": "task",
            "steering.": "steering"}


def _hypothesis(metric: str) -> str:
    return next((g for prefix, g in GROUP_OF.items() if metric.startswith(prefix)), "")


def _real_value_axis(ax, values) -> None:
    """Ticks at the swept values themselves (1, 10, 30), on a log axis when they span a factor of 20 or more."""
    values = sorted(set(float(v) for v in values))
    if values[0] > 0 and values[-1] / values[0] >= 20:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{v:g}" for v in values]))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _panel(ax, table: pd.DataFrame, dim: str, metric: str, others: list[str]) -> None:
    numeric_x = pd.api.types.is_numeric_dtype(table[dim])
    labels = sorted(table[dim].astype(str).unique()) if not numeric_x else None
    categorical_y = not pd.api.types.is_numeric_dtype(table[metric])
    levels = sorted(table[metric].dropna().astype(str).unique()) if categorical_y else None
    groups = table.groupby(others, dropna=False) if others else [("", table)]
    for i, (key, part) in enumerate(groups):
        part = part[[dim, metric]].dropna()
        if part.empty:
            continue
        xs = part[dim] if numeric_x else part[dim].astype(str).map({lab: j for j, lab in enumerate(labels)})
        ys = part[metric].astype(str).map({lev: j for j, lev in enumerate(levels)}) if categorical_y else part[metric]
        order = np.argsort(xs.to_numpy(dtype=float), kind="stable")
        keys = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{o}={k:g}" if isinstance(k, float) else f"{o}={k}" for o, k in zip(others, keys)) if others else None
        ax.plot(xs.to_numpy(dtype=float)[order], ys.to_numpy(dtype=float)[order], "o-", color=f"C{i % 10}", label=label, ms=5)
    if numeric_x:
        _real_value_axis(ax, table[dim].dropna())
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    if categorical_y:
        ax.set_yticks(range(len(levels)), levels, fontsize=7)
    elif metric.endswith((".p", "_p", "p_adj", "p_partial")):
        ax.axhline(0.05, color="red", lw=0.8, ls="--", label="p = 0.05")
        ax.set_ylim(-0.03, 1.03)
    elif metric.endswith(("_z", "effect_size", "_r")):
        ax.axhline(0.0, color="grey", lw=0.8)
        if metric.endswith("_z"):
            ax.axhline(2.0, color="red", lw=0.8, ls="--", label="z = 2")
    ax.set_xlabel(dim, fontsize=8)
    ax.set_title(f"{_hypothesis(metric)}: {metric}", fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, frameon=False)


def plot_hypotheses(table: pd.DataFrame, dims: list[str], metrics: list[str], constant: dict, title: str = ""):
    """The sweep's answer on one figure: each headline statistic (rows) against each swept dimension
    (columns), with the swept values themselves on the axis. Other dimensions become one line each.
    Statistics that did not vary are not drawn but listed under the figure."""
    panels = [(m, d) for m in metrics for d in dims]
    ncols = len(dims) if len(dims) > 1 else min(4, max(1, len(metrics)))
    nrows = max(1, int(np.ceil(len(panels) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.9), squeeze=False)
    for ax, (metric, dim) in zip(axes.flat, panels):
        _panel(ax, table, dim, metric, [d for d in dims if d != dim])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if not panels:
        axes[0][0].text(0.5, 0.5, "no headline statistic varies across these runs", ha="center", va="center")
    fig.suptitle(f"H1-H3 across the sweep{': ' + title if title else ''} ({len(table)} runs)", fontsize=11)
    if constant:
        items = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in constant.items()]
        lines = [", ".join(items[i : i + 5]) for i in range(0, len(items), 5)]
        fig.text(0.01, 0.0, "Same in every run (not drawn): " + "\n".join(lines), fontsize=7, va="top", wrap=True)
    fig.tight_layout(rect=(0, 0.0, 1, 0.97))
    return fig


# ---- cross-layer (sae.layer sweeps) ----------------------------------------------------


def _band(ax, x0: float, x1: float, y0: tuple[float, float], y1: tuple[float, float], colour, label: str):
    """A band from the span y0 at x0 to the span y1 at x1, along a smooth (cosine) curve."""
    t = np.linspace(0, 1, 40)
    s = (1 - np.cos(np.pi * t)) / 2
    x = x0 + (x1 - x0) * t
    low, high = y0[0] + (y1[0] - y0[0]) * s, y0[1] + (y1[1] - y0[1]) * s
    ax.fill(np.r_[x, x[::-1]], np.r_[low, high[::-1]], color=colour, alpha=0.45, lw=0, label=label)


def plot_layer_flow(layers: list[int], sizes: dict, flows: dict, outside: dict | None = None, title: str = ""):
    """Kept clusters of each layer as stacked boxes (height = kept features), one column per layer, and a band
    from a cluster at layer a to one at the next layer b as wide as ``flows[(a, b)].loc[cluster_a, cluster_b]``
    (features matched between them); ``outside[(a, b)][cluster_a]`` features go to a grey box under b's clusters
    (matched, but not into b's network). Each band's label is ``"La:ca->Lb:cb=n"`` (``cb`` = ``outside``)."""
    gap, width = 2.0, 0.12
    fig, ax = plt.subplots(figsize=(2.6 * max(len(layers), 2) + 1, 6))
    spans: dict = {}  # (layer, cluster) -> (bottom, top); stacked top-down in cluster order
    for x, layer in enumerate(layers):
        top = 0.0
        clusters = list(sizes.get(layer, {}))
        for cluster in clusters:
            n = sizes[layer][cluster]
            spans[(layer, cluster)] = (top - n, top)
            ax.add_patch(plt.Rectangle((x - width / 2, top - n), width, n, color=cluster_colour(cluster, clusters)))
            ax.text(x - width / 2 - 0.03, top - n / 2, f"c{cluster} ({n})", ha="right", va="center", fontsize=7)
            top -= n + gap
    for x, (a, b) in enumerate(zip(layers, layers[1:])):
        counts = flows.get((a, b))
        counts = pd.DataFrame() if counts is None else counts
        away = (outside or {}).get((a, b))
        if away is not None and away.sum() > 0:  # a grey box under b's clusters, fed only from a
            bottom = min([s[0] for (layer, _), s in spans.items() if layer == b] + [0.0]) - gap
            n = int(away.sum())
            spans[(b, "outside")] = (bottom - n, bottom)
            ax.add_patch(plt.Rectangle((x + 1 - width / 2, bottom - n), width, n, color=(0.8, 0.8, 0.8, 1.0)))
            ax.text(x + 1 + width / 2 + 0.03, bottom - n / 2, f"outside the network ({n})", va="center", fontsize=7)
            counts = counts.copy()
            for c, value in away.items():
                counts.loc[c, "outside"] = value
            counts = counts.fillna(0)
        if counts.empty:
            continue
        out_used = {c: spans[(a, c)][1] for c in counts.index if (a, c) in spans}
        in_used = {c: spans[(b, c)][1] for c in counts.columns if (b, c) in spans}
        for ca in counts.index:
            for cb in counts.columns:
                n = int(counts.loc[ca, cb])
                if n == 0 or ca not in out_used or cb not in in_used:
                    continue
                src, dst = (out_used[ca] - n, out_used[ca]), (in_used[cb] - n, in_used[cb])
                out_used[ca] -= n
                in_used[cb] -= n
                _band(ax, x + width / 2, x + 1 - width / 2, src, dst, cluster_colour(ca, list(sizes[a])),
                      f"L{a}:{ca}->L{b}:{cb}={n}")
    ax.set_xticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.autoscale(axis="y")
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
