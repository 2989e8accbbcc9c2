"""The figures say what they show: axes on the data, integer set sizes, the factor in the title, the
kept clusters marked, an explanation when the observed value lies below the null, and H2's p-value."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from featsweep import plots


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    rows = [(s, kind, str(c), rng.uniform(0, 0.1) + (0.05 if kind == "between" else 0))
            for s in (1, 2, 3) for kind in ("within", "between") for c in (0, 1) for _ in range(6)]
    return pd.DataFrame(rows, columns=["size", "sampling", "clusters", "prob"])


def test_linear_vs_exact_axes_follow_the_data_not_the_outliers():
    rng = np.random.default_rng(0)
    linear = np.concatenate([rng.normal(0, 3, 3000), [75.0, -75.0]])
    exact = 0.5 * linear + rng.normal(0, 1, len(linear))
    fig = plots.plot_linear_vs_exact(linear, exact, 0.8, factor=30)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert -15 < lo < -5 and 5 < hi < 15  # the 1-99% range, not +-75
    identity = [line for line in ax.get_lines() if line.get_label() == "exact = linear"][0]
    assert tuple(identity.get_xdata()) == pytest.approx((lo, hi))
    assert "factor 30" in ax.get_title() and "outside the axes" in " ".join(t.get_text() for t in ax.texts)
    plt.close(fig)


def test_cluster_breakdown_has_whole_set_sizes_the_factor_and_the_baseline(sets):
    single = pd.DataFrame({"cluster": [0, 0, 1, 1], "mean_prob": [0.1, 0.2, 0.05, 0.15]})
    fig = plots.plot_cluster_breakdown(single, sets, [0, 1], factor=10, baseline=0.6)
    right = fig.axes[1]
    assert list(right.get_xticks()) == [1, 2, 3]
    assert "factor 10" in fig._suptitle.get_text()
    assert any("no steering: 0.6" in t.get_text() for t in right.texts)  # far from the data: a note, not a line
    plt.close(fig)


def test_within_between_shows_the_p_value_and_a_nearby_baseline_as_a_line(sets):
    fig = plots.plot_within_between(sets, "prob", baseline=0.08, title="H2, factor 10")
    ax = fig.axes[0]
    assert "Mann-Whitney p = " in ax.get_title() and "factor 10" in ax.get_title()
    assert any(line.get_label().startswith("no steering") for line in ax.get_lines())
    plt.close(fig)


def test_null_plot_explains_an_observed_value_below_the_null():
    null = np.random.default_rng(0).normal(0.87, 0.04, 50)
    fig = plots.plot_null_distribution(null, 0.68, "modularity")
    assert "BELOW the null" in " ".join(t.get_text() for t in fig.texts) and "edge-matched" in " ".join(t.get_text() for t in fig.texts)
    plt.close(fig)
    fig = plots.plot_null_distribution(null, 1.2, "modularity")
    assert not fig.texts
    plt.close(fig)


def test_sorted_heatmap_boxes_each_kept_cluster():
    features = list(range(12))
    corr = pd.DataFrame(np.eye(12), index=features, columns=features)
    partition = {f: f // 4 for f in features}
    fig = plots.plot_corr_heatmap(corr, "sorted", partition=partition, kept=[0, 2])
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, plt.Rectangle)]
    assert sorted((b.get_x(), b.get_width()) for b in boxes) == [(-0.5, 4), (3.5, 4)]  # kept clusters come first
    assert "2 kept clusters" in ax.get_title()
    plt.close(fig)
