"""Corpus co-occurrence: the sparse counter against dense brute force, the measures against sklearn and the
2x2-table formula, the auto threshold against a scan, the stage's bad-input handling, and a real sweep."""

from __future__ import annotations

import io

import networkx as nx
import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.metrics import pairwise_distances

from featsweep.config import CooccurrenceConfig, checked
from featsweep.engines.dictionary_graph import auto_threshold, build_dictionary_graph, component_size_at
from featsweep.errors import FeatsweepError
from featsweep.config import CorpusConfig, ModelConfig
from featsweep.engines.cooccurrence import (Counts, CooccurrenceCounter, check_window, count_cooccurrence,
                                           dense_weights, latent_blocks, measure_values, pair_counts, weights)
from featsweep.stages.corpus import corpus_pass, separator_id, token_rows
from featsweep.stages.corpus_text import corpus_documents
from featsweep.stages.dictionary import cooccurrence_stage
from helpers import athlete_texts, compose_with, mlflow_runs, run_featsweep

OTHER_MODEL = ModelConfig(source="transformer_lens", name="gpt2")  # not the organism: corpus.path is read


def random_batches(seed: int, n_batches: int = 3, rows: int = 4, ctx: int = 11, d: int = 40):
    """Sparse non-negative activations with ragged valid lengths (padding and BOS masked)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        acts = torch.relu(torch.randn(rows, ctx, d, generator=gen) - 1.0)
        lengths = torch.randint(2, ctx + 1, (rows,), generator=gen)
        pos = torch.arange(ctx)
        mask = (pos[None] >= 1) & (pos[None] < lengths[:, None])
        out.append((acts, mask))
    return out


def all_pairs(counts: Counts) -> sparse.csr_matrix:
    """Every pair that co-fired (a floor of 0 keeps them all: their Jaccard is positive)."""
    return pair_counts(counts, "jaccard", 0.0)[0]


def brute_codes(batches, threshold: np.ndarray, unit: str, window: int) -> np.ndarray:
    """The binary codes by plain loops: one row per valid token, or per window holding a valid token."""
    rows = []
    for acts, mask in batches:
        a, mk = acts.numpy(), mask.numpy()
        for r in range(a.shape[0]):
            if unit == "token":
                rows += [a[r, t] > threshold for t in range(a.shape[1]) if mk[r, t]]
            else:
                for start in range(0, a.shape[1], window):
                    ts = [t for t in range(start, min(start + window, a.shape[1])) if mk[r, t]]
                    if ts:
                        rows.append(np.any([a[r, t] > threshold for t in ts], axis=0))
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("unit,window", [("token", 1), ("window", 3), ("window", 5)])
@pytest.mark.parametrize("jumprelu", [False, True])
def test_counts_equal_a_dense_product_of_brute_force_codes(unit, window, jumprelu):
    batches = random_batches(1)
    d = batches[0][0].shape[-1]
    sae_threshold = torch.linspace(0.0, 1.0, d) if jumprelu else None
    counter = CooccurrenceCounter(d, unit, window, activation_threshold=0.25, sae_threshold=sae_threshold)
    for acts, mask in batches:
        counter.update(acts, mask)
    counts = counter.result()
    threshold = 0.25 + (sae_threshold.numpy() if jumprelu else 0.0)
    codes = brute_codes(batches, threshold, unit, window)
    dense = codes.T @ codes
    assert counts.n_units == len(codes)
    assert counts.n_tokens == sum(int(m.sum()) for _, m in batches)
    np.testing.assert_array_equal(counts.per_latent, np.diag(dense))
    np.testing.assert_array_equal(all_pairs(counts).toarray(), np.triu(dense, 1))
    order = np.random.default_rng(0).permutation(d)[:15]  # any order of latents
    np.testing.assert_array_equal(counts.full(order), dense[np.ix_(order, order)])
    again = count_cooccurrence(batches, CooccurrenceConfig(unit=unit, window=window, activation_threshold=0.25), d,
                               sae_threshold)
    np.testing.assert_array_equal(all_pairs(again).toarray(), all_pairs(counts).toarray())


def _counts_from(codes: np.ndarray) -> Counts:
    return Counts(codes=sparse.csc_matrix(codes.astype(np.int32)), n_tokens=len(codes))


def test_jaccard_matches_sklearn_and_phi_the_two_by_two_table():
    rng = np.random.default_rng(3)
    codes = (rng.random((200, 12)) < rng.uniform(0.02, 0.5, 12)).astype(np.int64)
    codes[:, 11] = 0  # a latent that never fires: both measures 0
    counts = _counts_from(codes)
    jac = dense_weights(counts, np.arange(12), "jaccard")
    expected = 1 - pairwise_distances(codes[:, :11].T.astype(bool), metric="jaccard")
    np.testing.assert_allclose(jac[:11, :11][~np.eye(11, dtype=bool)], expected[~np.eye(11, dtype=bool)])
    assert np.all(jac[11, :11] == 0)
    phi = dense_weights(counts, np.arange(12), "phi")
    for i in range(11):
        for j in range(11):
            if i != j:
                n11 = np.sum(codes[:, i] & codes[:, j])
                n10 = np.sum(codes[:, i] & ~codes[:, j] & 1)
                n01 = np.sum(~codes[:, i] & 1 & codes[:, j])
                n00 = len(codes) - n11 - n10 - n01
                ref = (n11 * n00 - n10 * n01) / np.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
                assert phi[i, j] == pytest.approx(ref)
    sparse_phi = weights(counts, "phi", 0.0).toarray()  # kept pairs (co-fired, phi >= 0), same values
    iu = np.triu_indices(12, 1)
    kept = (np.triu(codes.T @ codes, 1)[iu] > 0) & (phi[iu] >= 0)
    np.testing.assert_allclose(sparse_phi[iu][kept], phi[iu][kept])
    assert np.all(sparse_phi[iu][~kept] == 0)
    assert np.all(phi[iu][np.triu(codes.T @ codes, 1)[iu] == 0] <= 0)  # never co-fired: no positive floor keeps it


@pytest.mark.parametrize("measure", ["jaccard", "phi"])
@pytest.mark.parametrize("work", [1, 2000, 10**9])  # one latent per block, a few blocks, one block
def test_kept_pairs_are_exactly_those_at_or_above_the_floor_whatever_the_blocks(measure, work):
    rng = np.random.default_rng(7)
    codes = (rng.random((300, 30)) < rng.uniform(0.01, 0.4, 30)).astype(np.int64)
    counts = _counts_from(codes)
    blocks = latent_blocks(counts, work)
    assert blocks[0][0] == 0 and blocks[-1][1] == 30 and all(b[1] == c[0] for b, c in zip(blocks, blocks[1:]))
    assert len(blocks) == 30 if work == 1 else (len(blocks) == 1 if work == 10**9 else 1 < len(blocks) < 30)
    dense = codes.T @ codes
    diag = np.diag(dense)
    values = measure_values(dense, diag[:, None], diag[None, :], len(codes), measure)
    floor = 0.1
    expected = np.triu((dense > 0) & (values >= floor), 1)
    assert 0 < expected.sum() < np.triu(dense > 0, 1).sum()  # the floor drops some co-fired pairs, not all
    c, w = pair_counts(counts, measure, floor, work=work)
    np.testing.assert_array_equal(c.toarray(), np.where(expected, dense, 0))
    np.testing.assert_allclose(w.toarray(), np.where(expected, values, 0))


def _scan(w: sparse.csr_matrix, lo: int, hi: int):
    """Brute force: every distinct weight, its largest component by networkx; the lowest one that fits."""
    n = w.shape[0]
    coo = w.tocoo()
    for t in np.unique(coo.data[coo.data > 0]):
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from((a, b) for a, b, x in zip(coo.row, coo.col, coo.data) if x >= t)
        size = max(len(c) for c in nx.connected_components(g))
        if size <= hi:
            return (float(t), size) if size >= lo else None
    return None


@pytest.mark.parametrize("seed", range(4))
def test_auto_threshold_matches_a_brute_force_scan(seed):
    rng = np.random.default_rng(seed)
    n = 60
    dense = np.triu(rng.random((n, n)) * (rng.random((n, n)) < 0.15), 1)
    w = sparse.csr_matrix(dense)
    for lo, hi in [(10, 20), (25, 40), (5, 8)]:
        expected = _scan(w, lo, hi)
        if expected is None:
            with pytest.raises(FeatsweepError, match="auto_min_size|auto_max_size"):
                auto_threshold(w, lo, hi)
        else:
            assert auto_threshold(w, lo, hi) == pytest.approx(expected)
            assert component_size_at(w, expected[0]) == expected[1]


def _stage_counts(seed: int = 0) -> Counts:
    """Three planted families of 6 latents that co-fire, among 30 latents of background noise."""
    rng = np.random.default_rng(seed)
    codes = (rng.random((600, 30)) < 0.03).astype(np.int64)
    for family in range(3):
        on = rng.random(600) < 0.1
        codes[on, family * 6:(family + 1) * 6] |= (rng.random((on.sum(), 6)) < 0.9)
    return _counts_from(codes)


def test_the_stage_finds_planted_families_and_logs_a_readable_graph():
    counts = _stage_counts()
    cfg = CooccurrenceConfig(edge_threshold="0.3", n_permutations=0, n_matched=0)
    _, result = cooccurrence_stage(counts, cfg, seed=0)
    assert result.metrics["cooc.n_communities"] == 3 and result.metrics["cooc.largest_community"] == 6
    table = result.tables["tables/cooc_communities.parquet"]
    assert sorted(set(map(int, " ".join(table["latents"]).split()))) == list(range(18))
    g = nx.read_graphml(io.BytesIO(result.files["cooc/communities.graphml"]))
    assert g.number_of_nodes() == 18 and g.number_of_edges() == result.metrics["cooc.n_edges"]
    stored = sparse.load_npz(io.BytesIO(result.files["cooc/counts.npz"])).toarray()
    np.testing.assert_array_equal(np.diag(stored), counts.per_latent)
    assert {"plots/cooc_degree.png", "plots/cooc_communities.png"} <= set(result.figures)


def test_bad_thresholds_are_one_line_and_the_counts_are_still_logged():
    counts = _stage_counts()
    _, result = cooccurrence_stage(counts, CooccurrenceConfig(edge_threshold="1.0"), seed=0)
    assert "leaves no edge" in result.tags["cooc.error"] and "cooccurrence.edge_threshold" in result.tags["cooc.error"]
    assert "cooc/counts.npz" in result.files and result.metrics["cooc.n_pairs"] == pair_counts(counts, "jaccard", 0.01)[0].nnz
    w = weights(counts, "jaccard", 0.01)
    attained = {component_size_at(w, t) for t in np.unique(w.data)}
    gap = min(k for k in range(min(attained), max(attained)) if k not in attained)  # a size the search jumps over
    _, result = cooccurrence_stage(counts, CooccurrenceConfig(auto_min_size=gap, auto_max_size=gap), seed=0)
    assert f"No edge threshold gives a largest component of {gap}-{gap}" in result.tags["cooc.error"]
    assert "\n" not in result.tags["cooc.error"]


def test_codes_too_dense_to_pair_are_one_line_and_the_rest_is_still_logged(monkeypatch):
    counts = _stage_counts()
    per_unit = np.diff(counts.codes.tocsr().indptr)
    monkeypatch.setattr("featsweep.engines.cooccurrence.MAX_INCIDENCES", float(per_unit @ per_unit) - 1)
    _, result = cooccurrence_stage(counts, CooccurrenceConfig(), seed=0)
    assert result.tags["cooc.error"].startswith("The codes are too dense to count pairs")
    assert "cooccurrence.activation_threshold" in result.tags["cooc.error"] and "\n" not in result.tags["cooc.error"]
    assert result.metrics["cooc.n_units"] == 600 and "tables/cooc_latents.parquet" in result.tables
    assert "cooc.n_pairs" not in result.metrics and "cooc/counts.npz" not in result.files


@pytest.mark.parametrize("override,fix", [("cooccurrence.edge_threshold=2", "auto or a weight in (0, 1]"),
                                          ("cooccurrence.edge_threshold=often", "auto or a weight"),
                                          ("cooccurrence.window=0", "use 1 or more"),
                                          ("cooccurrence.auto_max_size=10", "auto_min_size=150"),
                                          ("cooccurrence.edge_threshold=0.005", "lower cooccurrence.floor"),
                                          ("cooccurrence.floor=-1", "0 keeps every pair")])
def test_bad_config_values_fail_at_compose_time(override, fix):
    with pytest.raises(FeatsweepError, match=fix.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        checked(compose_with([override]))


def test_the_corpus_pass_counts_cooccurrence_in_the_same_pass(tiny_subject, tmp_path):
    """The counter fed by the corpus stage's one pass equals codes rebuilt from every activation of the same rows
    (BOS separators inside rows left out), for both units."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(athlete_texts()[:60]))
    corpus_cfg = CorpusConfig(path=str(path), context=16, batch_size=5, n_tokens=10_000)
    tokenizer = tiny_subject.model.tokenizer
    bos = separator_id(tokenizer)
    rows = torch.tensor(list(token_rows(corpus_documents(corpus_cfg, OTHER_MODEL), tokenizer, bos, 16, 10_000)))
    with torch.no_grad():
        _, cache = tiny_subject.model.run_with_cache(rows, names_filter=tiny_subject.hook_name)
        active = (tiny_subject.sae.encode(cache[tiny_subject.hook_name]) > 0).numpy()
    valid = (rows != bos).numpy()
    for unit, window in (("token", 16), ("window", 4)):
        cfg = CooccurrenceConfig(unit=unit, window=window)
        counter = CooccurrenceCounter.from_config(cfg, tiny_subject.d_sae)
        stats = corpus_pass(tiny_subject, corpus_documents(corpus_cfg, OTHER_MODEL), corpus_cfg, progress=False,
                            counter=counter)
        if unit == "token":
            codes = active[valid]
        else:  # windows of 4 tokens within each row; a window of BOS only is no unit
            w = (active & valid[..., None]).reshape(len(rows), 4, 4, -1).any(axis=2)
            codes = w[valid.reshape(len(rows), 4, 4).any(axis=2)]
        codes = codes.astype(np.int64)
        counts = stats.cooccurrence
        assert counts.n_units == len(codes) and codes.sum() > 0
        np.testing.assert_array_equal(counts.per_latent, codes.sum(0))
        np.testing.assert_array_equal(all_pairs(counts).toarray(), np.triu(codes.T @ codes, 1))


def test_a_window_longer_than_a_corpus_row_is_one_clear_error():
    check_window(CooccurrenceConfig(unit="window", window=16), 16)
    with pytest.raises(FeatsweepError, match=r"cooccurrence.window<=16"):
        check_window(CooccurrenceConfig(unit="window", window=17), 16)


def test_communities_are_seeded():
    w = weights(_stage_counts(), "jaccard", 0.01)
    a = build_dictionary_graph(w, 0.2, "leiden", 1.0, seed=5).community
    b = build_dictionary_graph(w, 0.2, "leiden", 1.0, seed=5).community
    np.testing.assert_array_equal(a, b)


FAST = ["stages=[attribution,network,cooccurrence]", "task.limit=40", "clustering.n_null=0", "clustering.n_rewire=0",
        "clustering.n_bootstrap=0", "cooccurrence.n_permutations=50", "cooccurrence.n_matched=50"]


@pytest.mark.slow  # a real multirun of whole jobs (minutes); CI runs the slow tier
def test_a_sweep_over_the_unit_logs_both_jobs(tmp_path):
    proc = run_featsweep(tmp_path, "-m", *FAST, "cooccurrence.unit=token,window")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path)
    children = runs[runs["tags.mlflow.parentRunId"].notna()].set_index("params.cooccurrence.unit")
    assert sorted(children.index) == ["token", "window"] and (children["status"] == "FINISHED").all()
    assert children.loc["window", "metrics.cooc.n_units"] < children.loc["token", "metrics.cooc.n_units"]
    assert children.loc["token", "metrics.cooc.n_units"] == children.loc["token", "metrics.cooc.n_tokens"]
    assert set(children["tags.h4.verdict"]) <= {"supported", "not_supported", "inconclusive"}
    assert children["metrics.h4.perm_n"].tolist() == [50, 50]
    assert (children["tags.featsweep.stage.cooccurrence"] == "done").all()
