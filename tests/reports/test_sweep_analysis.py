"""A real factor sweep on the organism: the stage cache, the cross-run summary, and rerun reproducibility."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from helpers import artifacts, mlflow_runs, run_featsweep

pytestmark = pytest.mark.slow  # a 3-job sweep of the whole pipeline (about 80 s)

FAST = ["clustering.n_null=10", "clustering.n_bootstrap=5", "clustering.n_rewire=5", "clustering.n_continuum=3", "steering.samples_per_size=6"]


@pytest.fixture(scope="module")
def factor_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    proc = run_featsweep(work, "-m", "steering.factor=1,10,30", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_factor_sweep_computes_shared_stages_once(factor_sweep):
    work, _ = factor_sweep
    runs = mlflow_runs(work)
    jobs = runs[runs["tags.mlflow.parentRunId"].notna()].sort_values("start_time")
    assert len(jobs) == 3 and (jobs["status"] == "FINISHED").all()
    for stage in ("attribution", "network", "corpus"):
        assert jobs[f"tags.featsweep.cache.{stage}"].tolist() == ["miss", "hit", "hit"], stage
    # a hit gives exactly the numbers of the miss
    for metric in ("network.n_edges", "network.modularity", "h1.bootstrap_ari_mean", "attribution.n_selected_features"):
        assert jobs[f"metrics.{metric}"].nunique() == 1, metric
    assert jobs["metrics.steering.single.mean_prob"].nunique() == 3  # steering itself differs by factor
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    for run_id in jobs["run_id"]:
        logged = artifacts(client, run_id)
        assert {"tables/steering_single.parquet", "tables/steering_sets.parquet", "tables/features.parquet",
                "network/graph.graphml", "plots/steering_within_vs_between.png", "features.html",
                "tables/feature_contexts.parquet", "tables/cluster_answers.csv", "report.html"} <= logged


def test_sweep_summary_is_logged_to_the_parent_with_corrected_p_values(factor_sweep):
    work, _ = factor_sweep
    runs = mlflow_runs(work)
    parent = runs[runs["tags.featsweep.role"] == "sweep"].iloc[0]
    assert parent["status"] == "FINISHED"
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    logged = artifacts(client, parent["run_id"])
    assert "compare/summary.csv" in logged
    assert {"compare/hypotheses.png", "compare/report.html", "compare/summary_full.csv"} <= logged
    assert sorted(runs[runs["tags.mlflow.parentRunId"].notna()]["tags.mlflow.runName"]) == [
        "steering.factor=1", "steering.factor=10", "steering.factor=30"]
    local = client.download_artifacts(parent["run_id"], "compare/summary_full.csv", str(work))
    summary = pd.read_csv(local)
    assert sorted(summary["steering.factor"]) == [1.0, 10.0, 30.0]
    assert parent["tags.featsweep.compare.dimensions"] == "steering.factor"
    raw, adjusted = summary["h3.betweenness.p"], summary["h3.betweenness.p.sweep_adj"]
    assert ((adjusted - (raw * 3).clip(upper=1.0)).abs() < 1e-12).all()  # Bonferroni across the 3 factors


def test_compare_cli_prints_the_table(factor_sweep):
    work, _ = factor_sweep
    sweep_dir = next((work / "multirun").glob("*/*"))
    proc = run_featsweep(work, "--sweep", str(sweep_dir), module="featsweep.reports.compare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steering.factor" in proc.stdout and "h2.p" in proc.stdout
    assert "summary.csv" in proc.stdout


def test_rerun_reproduces_every_metric(factor_sweep):
    work, _ = factor_sweep
    runs = mlflow_runs(work)
    job = runs[runs["tags.mlflow.parentRunId"].notna()].iloc[0]
    proc = run_featsweep(work, job["run_id"], module="featsweep.rerun")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every metric identical" in proc.stdout
    assert "DIFFERS" not in proc.stdout
    rerun = mlflow_runs(work)
    new = rerun[rerun["tags.featsweep.rerun_of"] == job["run_id"]]
    assert len(new) == 1 and new.iloc[0]["tags.featsweep.cache.attribution"] == "off"  # really recomputed
