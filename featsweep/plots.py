"""Every figure featsweep makes. Each function takes plain data and returns a matplotlib Figure;
the pipeline writes it to a file and logs it under ``plots/``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# ---- network (H1) figures -------------------------------------------------------------

CLUSTER_CMAP = "tab10"


def _cluster_colour(cluster: int, kept: list[int]):
    """Kept clusters get a tab10/tab20 colour in their order; everything else is light grey."""
    if cluster in kept:
        cmap = plt.get_cmap("tab10" if len(kept) <= 10 else "tab20")
        return cmap(kept.index(cluster) % cmap.N)
    return (0.8, 0.8, 0.8, 1.0)


def plot_corr_heatmap(corr: pd.DataFrame, title: str = "feature attribution correlation",
                      partition: dict | None = None, kept: list[int] | None = None):
    """Correlation heatmap. With ``partition`` the features are sorted by cluster (kept clusters first,
    in id order) and cluster boundaries are drawn."""
    order = list(corr.index)
    bounds = []
    if partition is not None:
        kept = list(kept or [])
        order = sorted(order, key=lambda f: (partition[f] not in kept, partition[f], f))
        clusters = [partition[f] for f in order]
        bounds = [i for i in range(1, len(order)) if clusters[i] != clusters[i - 1]]
    values = corr.loc[order, order].to_numpy()
    n = len(order)
    size = min(12.0, 4.0 + n * 0.03)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    for b in bounds:
        ax.axhline(b - 0.5, color="k", lw=0.4)
        ax.axvline(b - 0.5, color="k", lw=0.4)
    if n <= 60:
        ax.set_xticks(range(n), [str(f) for f in order], rotation=90, fontsize=6)
        ax.set_yticks(range(n), [str(f) for f in order], fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"{title} ({n} features)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="r")
    fig.tight_layout()
    return fig


def _igraph_layout(graph, seed: int, weight) -> dict:
    """Fruchterman-Reingold layout by igraph (grid variant), from seeded random starting positions."""
    import igraph as ig

    nodes = list(graph.nodes)
    index = {n: k for k, n in enumerate(nodes)}
    g = ig.Graph(n=len(nodes), edges=[(index[a], index[b]) for a, b in graph.edges])
    weights = [float(d.get(weight, 1.0)) for _, _, d in graph.edges(data=True)] if weight else None
    start = np.random.default_rng(seed).uniform(-1, 1, size=(len(nodes), 2)).tolist()
    coords = g.layout_fruchterman_reingold(weights=weights, niter=200, seed=start, grid="auto").coords
    return {n: np.asarray(coords[k]) for k, n in enumerate(nodes)}


def plot_network(graph, partition: dict, kept: list[int], seed: int = 0, title: str = "feature network"):
    """Spring layout of the graph (weights pull), nodes coloured by kept cluster, the rest grey."""
    import networkx as nx

    fig, ax = plt.subplots(figsize=(8, 8))
    if graph.number_of_nodes() == 0:
        ax.set_title(f"{title}: empty")
        return fig
    weight = "weight" if graph.number_of_edges() else None
    if graph.number_of_nodes() <= 1000:
        pos = nx.spring_layout(graph, seed=seed, weight=weight, iterations=50)
    else:  # networkx's layout is O(n^2) Python/numpy per iteration (~30 s at 5,000 nodes); igraph's grid FR is C
        pos = _igraph_layout(graph, seed, weight)
    colours = [_cluster_colour(partition[n], kept) for n in graph.nodes]
    nx.draw_networkx_edges(graph, pos, ax=ax, width=0.3, alpha=0.3)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=20, node_color=colours, linewidths=0)
    if graph.number_of_nodes() <= 60:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=6)
    handles = [plt.Line2D([], [], marker="o", ls="", color=_cluster_colour(c, kept), label=f"cluster {c}") for c in kept]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(f"{title} ({graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges)")
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_cluster_violins(features: pd.DataFrame, metrics: list[str], kept: list[int], title: str = ""):
    """One violin panel per metric, one violin per kept cluster."""
    ncols = min(4, max(1, len(metrics)))
    nrows = int(np.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        data, labels = [], []
        for c in kept:
            values = features.loc[features["cluster"] == c, metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                data.append(values)
                labels.append(str(c))
        if data and any(np.ptp(d) > 0 for d in data):
            parts = ax.violinplot(data, showmedians=True)
            for body, label in zip(parts["bodies"], labels):
                body.set_facecolor(_cluster_colour(int(label), kept))
        elif data:
            ax.plot(range(1, len(data) + 1), [d.mean() for d in data], "o")
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_xlabel("cluster")
        ax.set_title(metric, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_null_distribution(null: np.ndarray, observed: float, label: str, title: str = ""):
    """Histogram of a null sample with the observed value as a vertical line."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if len(null):
        ax.hist(null, bins=min(30, max(5, len(null) // 2)), color="0.6", label=f"null (n={len(null)})")
    if np.isfinite(observed):
        ax.axvline(observed, color="C3", lw=2, label=f"observed = {observed:.3g}")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title or f"{label}: permutation null vs observed")
    fig.tight_layout()
    return fig


# ---- steering (H2/H3) figures ---------------------------------------------------------


def plot_performance_vs_centrality(features: pd.DataFrame, fits: dict, performance: str = "mean_prob",
                                   centralities=("degree", "betweenness", "closeness", "eigenvector"),
                                   kept: list[int] | None = None, title: str = ""):
    """H3: per-feature performance after steering against each centrality, coloured by cluster, with the
    fitted line (``fits[c]`` holds slope, intercept, r2, p) in each panel."""
    kept = kept if kept is not None else sorted(features["cluster"].unique().tolist())
    fig, axes = plt.subplots(1, len(centralities), figsize=(4 * len(centralities), 3.6), squeeze=False)
    for ax, cent in zip(axes[0], centralities):
        colours = [_cluster_colour(int(c), kept) for c in features["cluster"]]
        ax.scatter(features[cent], features[performance], c=colours, s=18, alpha=0.8)
        fit = fits.get(cent, {})
        if np.isfinite(fit.get("slope", np.nan)):
            xs = np.linspace(np.nanmin(features[cent]), np.nanmax(features[cent]), 50)
            ax.plot(xs, fit["intercept"] + fit["slope"] * xs, "k-", lw=1.2)
            ax.set_title(f"{cent}: R²={fit['r2']:.2f}, p={fit['p']:.2g}", fontsize=9)
        else:
            ax.set_title(f"{cent}: no fit", fontsize=9)
        ax.set_xlabel(cent)
    axes[0][0].set_ylabel(performance.replace("_", " ") + " after steering")
    fig.suptitle(title or "performance against centrality (H3)")
    fig.tight_layout()
    return fig


def plot_within_between(sets: pd.DataFrame, performance: str = "prob", baseline: float | None = None, title: str = ""):
    """H2: performance of steered feature sets by set size, within one cluster against between clusters
    (points per set, line through the means)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    offsets = {"within": -0.12, "between": 0.12}
    colours = {"within": "tab:blue", "between": "tab:orange"}
    for sampling, group in sets.groupby("sampling"):
        off = offsets.get(sampling, 0.0)
        ax.scatter(group["size"] + off, group[performance], s=12, alpha=0.5, color=colours.get(sampling))
        means = group.groupby("size")[performance].mean()
        ax.plot(means.index + off, means.values, "o-", color=colours.get(sampling), label=sampling)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="baseline")
    ax.set_xticks(sorted(sets["size"].unique()))
    ax.set_xlabel("features steered")
    ax.set_ylabel(f"mean {performance} over prompts")
    ax.legend(fontsize=8)
    ax.set_title(title or "within- against between-cluster sets (H2)")
    fig.tight_layout()
    return fig


def plot_cluster_breakdown(single: pd.DataFrame, sets: pd.DataFrame, kept: list[int], performance: str = "mean_prob",
                           set_performance: str = "prob", title: str = ""):
    """Per-cluster view: single-feature performance after steering per cluster (left) and within-cluster
    set performance by set size per cluster (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    data = [single.loc[single["cluster"] == c, performance].to_numpy() for c in kept]
    if any(len(d) for d in data):
        left.boxplot(data)
        left.set_xticks(range(1, len(kept) + 1), [str(c) for c in kept])
    left.set_xlabel("cluster")
    left.set_ylabel(performance.replace("_", " ") + " (single feature)")
    within = sets[sets["sampling"] == "within"] if len(sets) else sets
    for c in kept:
        part = within[within["clusters"] == str(c)] if len(within) else within
        if len(part):
            means = part.groupby("size")[set_performance].mean()
            right.plot(means.index, means.values, "o-", color=_cluster_colour(c, kept), label=f"cluster {c}")
    right.set_xlabel("features steered (within one cluster)")
    right.set_ylabel(f"mean {set_performance}")
    if len(within):
        right.legend(fontsize=8)
    fig.suptitle(title or "per-cluster breakdown")
    fig.tight_layout()
    return fig


def plot_linear_vs_exact(linear, exact, r: float, title: str = ""):
    """The first-order (attribution-gradient) estimate of the change in logit difference against the
    exact change from steering, with the identity line."""
    linear, exact = np.asarray(linear, dtype=float), np.asarray(exact, dtype=float)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(linear, exact, s=6, alpha=0.4)
    finite = np.isfinite(linear) & np.isfinite(exact)
    if finite.any():
        lo = float(min(linear[finite].min(), exact[finite].min()))
        hi = float(max(linear[finite].max(), exact[finite].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("linear estimate of Δ logit diff")
    ax.set_ylabel("exact Δ logit diff")
    ax.set_title(title or f"linear preview against exact (r={r:.2f})")
    fig.tight_layout()
    return fig


# ---- sweep (compare) figures ------------------------------------------------------------


def metric_vs_dimension(table: pd.DataFrame, dimension: str, metric: str):
    """One hypothesis metric across the values of one swept dimension (one point per run)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = table[[dimension, metric]].dropna()
    numeric = pd.api.types.is_numeric_dtype(data[dimension])
    if numeric:
        means = data.groupby(dimension)[metric].mean()
        ax.plot(means.index, means.values, "-", color="grey", alpha=0.6)
        ax.scatter(data[dimension], data[metric], zorder=3)
        if data[dimension].min() > 0 and data[dimension].max() / data[dimension].min() >= 20:
            ax.set_xscale("log")
    else:
        labels = sorted(data[dimension].astype(str).unique())
        positions = data[dimension].astype(str).map({label: i for i, label in enumerate(labels)})
        ax.scatter(positions, data[metric], zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    if metric.endswith((".p", ".p_partial", "p_adj")):
        ax.axhline(0.05, color="red", lw=0.8, ls="--", label="0.05")
        ax.legend(frameon=False)
    ax.set_xlabel(dimension)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {dimension}", fontsize=9)
    fig.tight_layout()
    return fig
