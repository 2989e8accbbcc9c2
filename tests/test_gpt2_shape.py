"""Slow tier: the blog's configuration (experiment=seed) at GPT-2 small's real shape, random weights, offline."""

from __future__ import annotations

import pytest

from helpers import mlflow_runs, run_featsweep

pytestmark = pytest.mark.slow


def test_seed_experiment_at_gpt2_small_shape_runs_every_stage(tmp_path):
    proc = run_featsweep(tmp_path, "experiment=seed", "model.random_init=true", "sae.random_init=true", "task.limit=10",
                         "clustering.n_null=5", "clustering.n_bootstrap=3", "clustering.n_rewire=5", "clustering.n_continuum=3", "steering.samples_per_size=3",
                         # a random SAE fires densely: a short corpus keeps the corpus stage to seconds (the path is
                         # what is tested here; benchmarks/corpus.py measures its throughput at this shape)
                         "corpus.n_tokens=4096", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = mlflow_runs(tmp_path).iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.model.name"] == "gpt2-small" and run["params.sae.d_sae"] == "24576"
    assert run["tags.featsweep.tokenizer"] in ("gpt2", "organism-standin")
    for stage in ("task", "attribution", "network"):
        assert run[f"tags.featsweep.stage.{stage}"] == "done"
    assert run["metrics.network.n_features"] > 0 and run["metrics.attribution.n_active_entries"] > 0
    assert run["tags.featsweep.stage.steering"] == "done"
    assert run["metrics.steering.n_features"] > 0 and "metrics.h2.p" in run.index and "metrics.h3.degree.slope" in run.index
