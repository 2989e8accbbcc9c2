"""Feature dashboards and cluster cards on the organism's default network: the positive control (each kept
cluster's answer table ranks its own sport first, as in organism/MODEL_CARD.md) and the pages' contents."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from featsweep.control import build_network
from featsweep.subjects.organism import ASSETS_DIR
from featsweep.reports.run_report import Report
from featsweep.reports.dashboards import FEATURES_PAGE, cluster_answers, describe_network
from featsweep.stages.corpus import corpus_pass
from featsweep.stages.corpus_text import corpus_documents

# the organism's clusters (MODEL_CARD.md): baseball, tennis-and-golf, American football
SPORT_GROUPS = [{"baseball"}, {"tennis", "golf"}, {"football"}]
NO_NULLS = ["clustering.n_null=0", "clustering.n_rewire=0", "clustering.n_bootstrap=0"]  # the partition is the same


@pytest.fixture(scope="module")
def organism():
    built = build_network(NO_NULLS)
    cfg = built["cfg"]
    stats = corpus_pass(built["subject"], corpus_documents(cfg.corpus, cfg.model, ASSETS_DIR), cfg.corpus,
                        progress=False)
    return built, stats


def test_each_kept_cluster_ranks_its_own_sport_first(organism):
    built, _ = organism
    network, answers = built["network"], built["task"].frame["answer"]
    table = cluster_answers(network, answers)
    firsts = table[table["rank"] == 1].set_index("cluster")["answer"]
    assert len(firsts) == len(network.kept_clusters) == 3
    for group in SPORT_GROUPS:  # every group is some cluster's first answer, each cluster matches one group
        assert sum(answer in group for answer in firsts) == 1, firsts.to_dict()


def test_cluster_answers_equal_a_direct_mean(organism):
    built, _ = organism
    network, answers = built["network"], built["task"].frame["answer"].str.strip().to_numpy()
    table = cluster_answers(network, built["task"].frame["answer"])
    values = network.matrix.to_numpy(dtype=float)
    for cluster in network.kept_clusters:
        members = network.features.loc[network.features["cluster"] == cluster, "feature"].tolist()
        cols = [list(network.matrix.columns).index(f) for f in members]
        for answer in np.unique(answers):
            prompts = np.flatnonzero(answers == answer)
            direct = np.mean([np.mean(values[p, cols]) for p in prompts])
            got = table[(table["cluster"] == cluster) & (table["answer"] == answer)]["mean_attribution"].item()
            assert got == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_features_page_and_cards_show_every_feature_and_its_contexts(organism, tmp_path):
    built, stats = organism
    network, tokenizer = built["network"], built["subject"].model.tokenizer
    result, cards = describe_network(network, stats, built["task"].frame["answer"], tokenizer)
    page = result.files[FEATURES_PAGE].decode("utf-8")
    features = network.features["feature"].astype(int).tolist()
    assert all(f"id='f{f}'" in page for f in features)
    contexts = result.tables["tables/feature_contexts.parquet"]
    assert set(contexts["feature"]) <= set(features) and len(contexts)
    for row in contexts.head(50).itertuples():  # the marked token is the window's centre, decoded
        assert row.token == tokenizer.decode([row.token_id]) or row.token == " ¶ "
        assert row.activation == pytest.approx(float(stats.top_values[row.feature, row.rank - 1]))
    shown = sum(min(10, int((stats.top_values[f] > 0).sum())) for f in features)
    assert page.count("<mark>") == shown
    assert [c["cluster"] for c in cards] == list(network.kept_clusters)
    assert all(len(card["features"]) == min(5, card["size"]) for card in cards)
    report = Report()
    report.cards = cards
    text = report.html({})
    assert text.count("class='card'") == 3 and "href='features.html'" in text
    Path(tmp_path / "report.html").write_text(text)
    assert re.search(r"driven most by <i>(baseball|football|tennis|golf)</i>", text)


def test_the_sweep_page_links_each_runs_report(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from featsweep.reports.sweep_report import render_report, report_link

    figure = plt.figure()
    figure.savefig(tmp_path / "f.png")
    plt.close(figure)
    summary = pd.DataFrame({"steering.factor": [1.0, 10.0], "run_name": ["a", "b"], "run_id": ["r1", "r2"]})
    links = {"r1": report_link(f"file://{tmp_path}/1/r1/artifacts", "1", "r1"),
             "r2": report_link("s3://bucket/1/r2/artifacts", "1", "r2")}
    page = render_report(summary, ["steering.factor"], {}, tmp_path / "f.png", "t", links)
    assert f"href='file://{tmp_path}/1/r1/artifacts/report.html'>r1</a>" in page
    assert "href='http://127.0.0.1:5000/#/experiments/1/runs/r2'>r2</a>" in page
