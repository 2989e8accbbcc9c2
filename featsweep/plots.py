"""Every figure a run's stages make. Each function takes plain data and returns a matplotlib Figure; the
pipeline writes it to a file and logs it under ``plots/``. A sweep's figures are in ``featsweep.reports.figures``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# ---- network (H1) figures -------------------------------------------------------------

CLUSTER_CMAP = "tab10"


def cluster_colour(cluster: int, kept: list[int]):
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
    if partition is not None:  # a coloured box around each kept cluster's block, labelled with its id
        for cluster in kept:
            rows = [i for i, f in enumerate(order) if partition[f] == cluster]
            if rows:
                start, size = rows[0] - 0.5, len(rows)
                ax.add_patch(plt.Rectangle((start, start), size, size, fill=False, lw=1.6, ec=cluster_colour(cluster, kept)))
                ax.text(start + size + 0.5, start + size / 2, f"c{cluster}", color=cluster_colour(cluster, kept),
                        fontsize=7, va="center", fontweight="bold")
    if n <= 60:
        ax.set_xticks(range(n), [str(f) for f in order], rotation=90, fontsize=6)
        ax.set_yticks(range(n), [str(f) for f in order], fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    boxed = f"; boxes: the {len(kept)} kept clusters" if partition is not None and kept else ""
    ax.set_title(f"{title} ({n} features{boxed})")
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
    colours = [cluster_colour(partition[n], kept) for n in graph.nodes]
    nx.draw_networkx_edges(graph, pos, ax=ax, width=0.3, alpha=0.3)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=20, node_color=colours, linewidths=0)
    if graph.number_of_nodes() <= 60:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=6)
    handles = [plt.Line2D([], [], marker="o", ls="", color=cluster_colour(c, kept), label=f"cluster {c}") for c in kept]
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
                body.set_facecolor(cluster_colour(int(label), kept))
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


def plot_null_distribution(null: np.ndarray, observed: float, label: str, title: str = "", note: str = ""):
    """Histogram of a null sample with the observed value as a vertical line, its z-score, and a note that
    says what an observed value below the null means."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if len(null):
        ax.hist(null, bins=min(30, max(5, len(null) // 2)), color="0.6", label=f"null (n={len(null)}): {null.mean():.3g} ± {null.std(ddof=1) if len(null) > 1 else 0:.2g}")
    if np.isfinite(observed):
        ax.axvline(observed, color="C3", lw=2, label=f"observed = {observed:.3g}")
    if len(null) > 1 and np.isfinite(observed):
        sd = null.std(ddof=1)
        z = (observed - null.mean()) / sd if sd > 0 else float("nan")
        above = float((null >= observed).mean())
        ax.text(0.02, 0.97, f"z = {z:.2g}; null ≥ observed in {above:.0%} of samples", transform=ax.transAxes, va="top", fontsize=8)
        if not note and observed < null.mean():
            note = "observed lies BELOW the null: chance alone gives more"
            if "modularity" in label:
                note += ("; a sparser null graph is more modular,\nso compare with the edge-matched null "
                         "(null_matched_modularity.png, h1.matched_modularity_z)")
    if note:
        fig.text(0.01, 0.0, note, fontsize=7, va="top", color="C3")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or f"{label}: permutation null (prompts shuffled per feature) vs observed", fontsize=9)
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
        colours = [cluster_colour(int(c), kept) for c in features["cluster"]]
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


def _baseline(ax, baseline: float | None, values) -> None:
    """The unsteered baseline as a line when it lies near the data, else as a note (it would squash the data)."""
    if baseline is None:
        return
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [5, 95]) if len(values) else (baseline, baseline)
    if lo - 0.5 * (hi - lo) <= baseline <= hi + 0.5 * (hi - lo):  # near the bulk of the data
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=f"no steering: {baseline:.3g}")
    else:
        ax.text(0.98, 0.97, f"no steering: {baseline:.3g} (off the axis)", transform=ax.transAxes, ha="right", va="top", fontsize=8, color="grey")


def plot_within_between(sets: pd.DataFrame, performance: str = "prob", baseline: float | None = None, title: str = ""):
    """H2: performance of steered feature sets by set size, within one cluster against between clusters
    (points per set, line through the means), with the Mann-Whitney p-value over all sizes."""
    from scipy.stats import mannwhitneyu

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    offsets = {"within": -0.12, "between": 0.12}
    colours = {"within": "tab:blue", "between": "tab:orange"}
    for sampling, group in sets.groupby("sampling"):
        off = offsets.get(sampling, 0.0)
        ax.scatter(group["size"] + off, group[performance], s=12, alpha=0.5, color=colours.get(sampling))
        means = group.groupby("size")[performance].mean()
        ax.plot(means.index + off, means.values, "o-", color=colours.get(sampling), label=f"{sampling} (mean)")
    _baseline(ax, baseline, sets[performance] if len(sets) else [])
    within = sets.loc[sets["sampling"] == "within", performance].dropna() if len(sets) else []
    between = sets.loc[sets["sampling"] == "between", performance].dropna() if len(sets) else []
    test = ""
    if len(within) and len(between):
        p = mannwhitneyu(within, between, alternative="two-sided").pvalue
        test = f"\nMann-Whitney p = {p:.2g}, all sizes (H2 predicts within < between)"
    if len(sets):
        ax.set_xticks(sorted(sets["size"].unique()))
    ax.set_xlabel("features steered")
    ax.set_ylabel(f"mean {performance} over prompts")
    ax.legend(fontsize=8, loc="center right")
    ax.set_title((title or "within- against between-cluster sets (H2)") + test, fontsize=9)
    fig.tight_layout()
    return fig


def plot_cluster_breakdown(single: pd.DataFrame, sets: pd.DataFrame, kept: list[int], performance: str = "mean_prob",
                           set_performance: str = "prob", title: str = "", factor: float | None = None,
                           baseline: float | None = None):
    """Per-cluster view: single-feature performance after steering per cluster (left) and within-cluster
    set performance by set size per cluster (right), against the unsteered baseline."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    data = [single.loc[single["cluster"] == c, performance].to_numpy() for c in kept]
    if any(len(d) for d in data):
        left.boxplot(data)
        left.set_xticks(range(1, len(kept) + 1), [str(c) for c in kept])
    _baseline(left, baseline, np.concatenate(data) if data else [])
    left.set_xlabel("kept cluster")
    left.set_ylabel(performance.replace("_", " ") + " (one feature steered)")
    within = sets[sets["sampling"] == "within"] if len(sets) else sets
    for c in kept:
        part = within[within["clusters"] == str(c)] if len(within) else within
        if len(part):
            means = part.groupby("size")[set_performance].mean()
            right.plot(means.index, means.values, "o-", color=cluster_colour(c, kept), label=f"cluster {c}")
    if len(within):
        right.set_xticks(sorted(int(v) for v in within["size"].unique()))  # set sizes are whole numbers
        _baseline(right, baseline, within[set_performance])
        right.legend(fontsize=8)
    right.set_xlabel("features steered (all from one cluster)")
    right.set_ylabel(f"mean {set_performance}")
    at = f" at factor {factor:g}" if factor is not None else ""
    fig.suptitle(title or f"per-cluster breakdown of steering{at}: one feature (left), sets from one cluster (right)")
    fig.tight_layout()
    return fig


def plot_linear_vs_exact(linear, exact, r: float, title: str = "", factor: float | None = None):
    """The first-order (attribution-gradient) estimate of the change in logit difference against the
    exact change from steering. Axes span the central 98% of the data (outliers are counted, not drawn),
    the identity line spans the visible range, and dense data is shown as a 2-D histogram."""
    linear, exact = np.asarray(linear, dtype=float), np.asarray(exact, dtype=float)
    finite = np.isfinite(linear) & np.isfinite(exact)
    linear, exact = linear[finite], exact[finite]
    fig, ax = plt.subplots(figsize=(5, 4.4))
    if len(linear):
        both = np.concatenate([linear, exact])
        lo, hi = np.percentile(both, [1, 99])
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad
        inside = (linear >= lo) & (linear <= hi) & (exact >= lo) & (exact <= hi)
        if len(linear) > 2000:
            hb = ax.hexbin(linear[inside], exact[inside], gridsize=40, bins="log", cmap="Blues", mincnt=1, extent=(lo, hi, lo, hi))
            fig.colorbar(hb, ax=ax, label="points (log)")
        else:
            ax.scatter(linear[inside], exact[inside], s=5, alpha=0.3, lw=0)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="exact = linear")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.legend(fontsize=8, loc="upper left")
        if (~inside).sum():
            ax.text(0.98, 0.02, f"{(~inside).sum()} of {len(linear)} points outside the axes", transform=ax.transAxes,
                    ha="right", fontsize=7)
    ax.set_xlabel("linear estimate of Δ logit diff")
    ax.set_ylabel("exact Δ logit diff (steered)")
    at = f" at factor {factor:g}" if factor is not None else ""
    ax.set_title(title or f"first-order estimate against exact steering{at} (r={r:.2f})", fontsize=9)
    fig.tight_layout()
    return fig


# ---- dictionary co-occurrence figures ---------------------------------------------------------


def plot_degree_distribution(degrees: np.ndarray, title: str = "dictionary graph degrees"):
    """How many latents have each degree (log-log; degree 0 counted in the title)."""
    degrees = np.asarray(degrees, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = degrees[degrees > 0]
    if len(positive):
        values, counts = np.unique(positive, return_counts=True)
        ax.loglog(values, counts, "o", ms=3)
    ax.set_xlabel("degree")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}\n{len(positive)} latents with an edge, {int(np.sum(degrees == 0))} without", fontsize=9)
    fig.tight_layout()
    return fig


def plot_dictionary_communities(graph, communities: list[int], seed: int = 0, max_nodes: int = 20):
    """A few dictionary communities, one panel each: the ``max_nodes`` best-connected latents of the
    community, labelled ``id: logit-lens tokens``, edge width by weight."""
    import networkx as nx

    n = max(1, len(communities))
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, cid in zip(axes.flat, communities):
        members = [v for v, d in graph.nodes(data=True) if d.get("community") == cid]
        sub = graph.subgraph(members)
        top = sorted(members, key=lambda v: (-sub.degree(v), v))[:max_nodes]
        sub = graph.subgraph(top)
        pos = nx.spring_layout(sub, seed=seed, weight="weight")
        widths = [0.5 + 3 * d["weight"] for _, _, d in sub.edges(data=True)]
        nx.draw_networkx_edges(sub, pos, ax=ax, width=widths, alpha=0.3)
        nx.draw_networkx_nodes(sub, pos, ax=ax, node_size=30, node_color=[plt.get_cmap("tab10")(cid % 10)])
        nx.draw_networkx_labels(sub, pos, ax=ax, font_size=6,
                                labels={v: f"{v}: {graph.nodes[v].get('label', '')}" for v in sub.nodes})
        shown = f", {len(top)} best-connected shown" if len(members) > len(top) else ""
        ax.set_title(f"community {cid}: {len(members)} latents{shown}", fontsize=9)
    if not communities:
        axes.flat[0].set_title("no dictionary community")
    fig.tight_layout()
    return fig
