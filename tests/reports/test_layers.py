"""The cross-layer section of an sae.layer sweep: its numbers against independent computations, its figure
against its table, and a real organism multirun producing it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Polygon
from mlflow.tracking import MlflowClient
from sklearn.metrics import adjusted_mutual_info_score

from featsweep.reports.figures import plot_layer_flow
from featsweep.reports.layers import MIN_COSINE, flow_counts, layer_section, match_layers, outside_counts
from helpers import artifacts, compose_with, mlflow_runs, run_featsweep


def _features(ids, clusters, kept_clusters):
    return pd.DataFrame({"feature": ids, "cluster": clusters, "kept": np.isin(clusters, kept_clusters)})


def _layers(seed=0, n=60, d=128, noise=0.0):
    """Layer B's SAE is layer A's, its latents permuted (and some noise); A's network features keep their
    clusters at B, relabelled."""
    rng = np.random.default_rng(seed)
    W_a = rng.normal(size=(n, d))
    perm = rng.permutation(n)  # B row j is A's latent perm[j]
    W_b = W_a[perm] + noise * rng.normal(size=(n, d))
    where_in_b = np.argsort(perm)
    ids_a = rng.choice(n, 30, replace=False)
    clusters_a = np.repeat([0, 1, 2], 10)
    relabel = {0: 5, 1: 3, 2: 7}
    feats_a = _features(ids_a, clusters_a, [0, 1])
    feats_b = _features(where_in_b[ids_a], [relabel[c] for c in clusters_a], [5, 3, 7])
    return feats_a, W_a, feats_b, W_b, where_in_b


def test_a_relabelled_copy_carries_every_kept_cluster_over_whole():
    feats_a, W_a, feats_b, W_b, where_in_b = _layers()
    row, matches = match_layers(feats_a, W_a, feats_b, W_b)
    kept_a = feats_a[feats_a["kept"]].sort_values("feature")
    assert matches["feature_a"].tolist() == kept_a["feature"].tolist()
    assert matches["feature_b"].tolist() == where_in_b[kept_a["feature"]].tolist()
    np.testing.assert_allclose(matches["cosine"], 1.0)
    assert row["frac_top1"] == 1.0 and row["frac_assigned"] == 1.0 and row["n_pairs"] == 20
    assert row["ami"] == pytest.approx(1.0)
    assert row["frac_top1_null"] < 0.2  # a random rotation of B loses the match
    flow = flow_counts(matches)
    assert flow.to_dict() == {3: {0: 0, 1: 10}, 5: {0: 10, 1: 0}}


def test_noisy_match_numbers_against_an_independent_computation():
    feats_a, W_a, feats_b, W_b, _ = _layers(seed=1, noise=2.2)
    row, matches = match_layers(feats_a, W_a, feats_b, W_b)
    kept = feats_a[feats_a["kept"]].sort_values("feature")
    unit = lambda W: W / np.linalg.norm(W, axis=1, keepdims=True)
    cos = unit(W_a[kept["feature"]]) @ unit(W_b).T
    assert row["frac_top1"] == pytest.approx(np.mean(cos.max(axis=1) >= MIN_COSINE))
    np.testing.assert_allclose(matches["top1_cosine"], cos.max(axis=1))
    np.testing.assert_allclose(matches["cosine"], cos[np.arange(len(kept)), matches["feature_b"]])
    assert matches["feature_b"].is_unique
    b_cluster = feats_b[feats_b["kept"]].set_index("feature")["cluster"]
    pairs = [(ca, b_cluster[fb]) for ca, fb, c in zip(matches["cluster_a"], matches["feature_b"], matches["cosine"])
             if c >= MIN_COSINE and fb in b_cluster.index]
    assert row["n_pairs"] == len(pairs) and 2 <= len(pairs) < 20
    assert row["ami"] == pytest.approx(adjusted_mutual_info_score([p[0] for p in pairs], [p[1] for p in pairs]))
    expected = pd.Series(pairs).value_counts()
    flow = flow_counts(matches)
    assert {(a, b): int(flow.loc[a, b]) for a in flow.index for b in flow.columns if flow.loc[a, b]} == expected.to_dict()


def test_the_flow_plot_draws_the_matching_table():
    feats_a, W_a, feats_b, W_b, _ = _layers(seed=2, noise=2.0)
    feats_b["kept"] = feats_b["cluster"] != 5  # cluster 0's counterpart is not kept at b: its matches go outside
    _, matches = match_layers(feats_a, W_a, feats_b, W_b)
    flow = flow_counts(matches)
    sizes = {0: feats_a[feats_a.kept]["cluster"].value_counts().sort_index().to_dict(),
             1: feats_b[feats_b.kept]["cluster"].value_counts().sort_index().to_dict()}
    away = outside_counts(matches)
    fig = plot_layer_flow([0, 1], sizes, {(0, 1): flow}, {(0, 1): away})
    bands = [p for p in fig.axes[0].patches if isinstance(p, Polygon) and p.get_label().startswith("L0:")]
    drawn = {}
    for band in bands:
        name, n = band.get_label().split("=")
        xy = band.get_xy()
        left = xy[np.isclose(xy[:, 0], xy[:, 0].min()), 1]
        assert left.max() - left.min() == pytest.approx(int(n))  # the band is as wide as its count
        drawn[name] = int(n)
    expected = {f"L0:{a}->L1:{b}": int(flow.loc[a, b]) for a in flow.index for b in flow.columns if flow.loc[a, b]}
    expected |= {f"L0:{a}->L1:outside": int(n) for a, n in away.items() if n}
    assert drawn == expected and away.sum() > 0 and flow.to_numpy().sum() > 0
    # the matched features whose partner is outside b's network, counted independently
    assert away.sum() == (matches["matched"] & ~matches["feature_b"].isin(feats_b[feats_b.kept]["feature"])).sum()


def test_values_interpolated_from_the_layer_are_not_settings_of_their_own():
    """SmolLM2's sweep varies sae.path and sae.hook_name with sae.layer: one group of three layers, not three
    groups of one; a dimension swept beside the layer still splits the groups."""
    from featsweep.reports.layers import settings_besides_layer

    table = pd.DataFrame({"sae.layer": [6, 12, 18, 6, 12, 18], "sae.path": ["a/layer_6", "a/layer_12", "a/layer_18"] * 2,
                          "sae.hook_name": [f"blocks.{x}.hook_resid_pre" for x in (6, 12, 18)] * 2,
                          "steering.factor": [1.0] * 3 + [2.0] * 3})
    dims = ["sae.layer", "sae.path", "sae.hook_name", "steering.factor"]
    assert settings_besides_layer(table, dims) == ["steering.factor"]
    assert settings_besides_layer(table[:3], dims[:3]) == []
    # a dimension that is constant within each layer but shared by two layers is a setting, not the layer's name
    table["seed"] = [0, 0, 1, 0, 0, 1]
    assert settings_besides_layer(table, [*dims, "seed"]) == ["steering.factor", "seed"]


def test_a_one_layer_sweep_says_there_is_nothing_to_match(tmp_path):
    table = pd.DataFrame({"sae.layer": [3], "run_id": ["x"]})
    assert "nothing to match" in layer_section(None, table, [], tmp_path, overrides="stages=[task] sae.layer=3")
    assert layer_section(None, table, [], tmp_path, overrides="steering.factor=1,2") == ""
    # two layers, but each factor with one of them (failed jobs left the rest out): no setting holds two layers
    table = pd.DataFrame({"sae.layer": [2, 3, 3], "steering.factor": [1.0, 2.0, 3.0], "run_id": ["x", "y", "z"]})
    note = layer_section(None, table, ["sae.layer", "steering.factor"], tmp_path)
    assert "no setting of the other swept dimensions has two layers" in note


def test_a_layer_sweep_without_the_network_stage_says_what_is_missing(tmp_path):
    from omegaconf import OmegaConf

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "artifacts"))
    ids = []
    for layer in (2, 3):
        run = client.create_run(experiment).info.run_id
        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose_with([f"sae.layer={layer}"])))
        client.log_artifact(run, str(tmp_path / "config.yaml"), "config")
        ids.append(run)
    table = pd.DataFrame({"sae.layer": [2, 3], "run_id": ids})
    note = layer_section(client, table, ["sae.layer"], tmp_path / "compare")
    assert "has no tables/features.parquet" in note and "stages=[task,attribution,network" in note


@pytest.mark.slow  # a real multirun of whole jobs (minutes); CI runs the slow tier
def test_an_organism_layer_sweep_puts_the_cross_layer_flow_on_the_compare_page(tmp_path):
    proc = run_featsweep(tmp_path, "-m", "stages=[task,attribution,network,cooccurrence]", "task.limit=60",
                         "clustering.n_null=0", "clustering.n_bootstrap=0", "clustering.n_rewire=0",
                         "cooccurrence.n_permutations=50", "cooccurrence.n_matched=50", "sae.layer=2,3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    assert "featsweep.compare_error" not in parent or pd.isna(parent.get("tags.featsweep.compare_error"))
    compare = next((tmp_path / "multirun").glob("*/*/compare"))
    page = (compare / "report.html").read_text()
    assert "Features followed across layers" in page and page.count("data:image/png") == 2
    pairs = pd.read_csv(compare / "layers" / "layer_pairs.csv")
    assert pairs[["layer_a", "layer_b"]].values.tolist() == [[2, 3]]
    matches = pd.read_csv(compare / "layers" / "matches_L2_L3.csv")
    assert len(matches) == pairs.loc[0, "n_kept_a"] > 0
    assert pairs.loc[0, "frac_top1"] == pytest.approx((matches["top1_cosine"] >= MIN_COSINE).mean())
    assert pairs.loc[0, "n_pairs"] == (matches["matched"] & matches["cluster_b"].notna()).sum()
    summary = pd.read_csv(compare / "summary.csv").set_index("sae.layer")  # H4 compared across the layers
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]].set_index("params.sae.layer")
    for layer in (2, 3):
        assert summary.loc[layer, "h4.verdict"] == children.loc[str(layer), "tags.h4.verdict"]
        assert summary.loc[layer, "h4.statistic"] == pytest.approx(children.loc[str(layer), "metrics.h4.statistic"])
    full = pd.read_csv(compare / "summary_full.csv").set_index("sae.layer")
    assert (full["cooc.n_communities"] > 0).all() and (full["h4.perm_p.sweep_adj"] >= full["h4.perm_p"]).all()
    logged = artifacts(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), parent["run_id"])
    assert {"compare/layer_flow.png", "compare/layers/layer_pairs.csv", "compare/layers/matches_L2_L3.csv"} <= logged
