"""The corpus stage against a brute-force recomputation that keeps every activation, and its bad inputs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from featsweep.config import CorpusConfig, ModelConfig
from featsweep.errors import FeatsweepError
from featsweep.stages.corpus import (HIST_BIN, LEFT, QUANTILES, RIGHT, corpus_pass, corpus_stage, separator_id,
                                     token_rows)
from featsweep.stages.corpus_text import Documents, corpus_documents
from helpers import athlete_texts, run_featsweep

OTHER_MODEL = ModelConfig(source="transformer_lens", name="gpt2")


def text_file(tmp_path, n_lines: int = 60):
    """A .jsonl corpus, one document a line: BOS separators fall inside rows."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in athlete_texts()[:n_lines]))
    return path


def brute_force(subject, rows: list[list[int]], bos: int):
    """Every activation of every row (the hook's value from run_with_cache, then the encoder), BOS zeroed."""
    tokens = torch.tensor(rows)
    with torch.no_grad():
        _, cache = subject.model.run_with_cache(tokens, names_filter=subject.hook_name)
        acts = subject.sae.encode(cache[subject.hook_name]).float().numpy()
    acts[(tokens == bos).numpy()] = 0.0
    return tokens.numpy(), acts


def test_top_contexts_density_max_and_quantiles_equal_brute_force(tiny_subject, tmp_path):
    cfg = CorpusConfig(path=str(text_file(tmp_path)), context=16, batch_size=7, top_k=4, n_tokens=10_000)
    docs = corpus_documents(cfg, OTHER_MODEL)
    stats = corpus_pass(tiny_subject, docs, cfg, progress=False)
    tokenizer = tiny_subject.model.tokenizer
    bos = separator_id(tokenizer)
    rows = list(token_rows(corpus_documents(cfg, OTHER_MODEL), tokenizer, bos, 16, 10_000))
    tokens, acts = brute_force(tiny_subject, rows, bos)
    assert stats.n_rows == len(rows) and len(rows) % 7 != 0  # a partial last batch is counted too
    n = int((tokens != bos).sum())
    assert stats.n_tokens == n and (tokens[:, 1:] == bos).any()  # separators inside rows are left out too
    np.testing.assert_array_equal(stats.fire_count, (acts > 0).sum(axis=(0, 1)))
    np.testing.assert_allclose(stats.density, (acts > 0).sum(axis=(0, 1)) / n)
    np.testing.assert_allclose(stats.max, acts.max(axis=(0, 1)), rtol=1e-5, atol=1e-6)

    row_max, row_arg = acts.max(axis=1), acts.argmax(axis=1)  # [rows, d]
    padded = np.pad(tokens, ((0, 0), (LEFT, RIGHT)), constant_values=-1)
    checked = 0
    for latent in range(tiny_subject.d_sae):
        order = np.argsort(-row_max[:, latent], kind="stable")[:4]
        order = order[row_max[order, latent] > 0]
        got = stats.top_values[latent][: len(order)]
        np.testing.assert_allclose(got, row_max[order, latent], rtol=1e-5, atol=1e-6)
        assert np.all(stats.top_values[latent][len(order):] == 0)
        def window(row, latent=latent):
            return padded[row, row_arg[row, latent] : row_arg[row, latent] + LEFT + 1 + RIGHT]
        for rank in range(len(order)):
            # rows sharing a prefix tie exactly (causal attention), so a context may be any row of the same value
            tied = np.flatnonzero(np.abs(row_max[:, latent] - got[rank]) <= 1e-5 * max(1.0, got[rank]))
            assert any(np.array_equal(stats.top_windows[latent, rank], window(r)) for r in tied), (latent, rank)
            checked += 1
        fired = acts[..., latent][acts[..., latent] > 0]
        if len(fired) >= 5 and fired.min() > 1e-3:
            exact = np.quantile(fired, QUANTILES, method="inverted_cdf")
            est = stats.quantiles()[latent]
            assert np.all(np.abs(np.log10(est) - np.log10(exact)) <= HIST_BIN + 1e-9), (latent, est, exact)
    assert checked > 100


def test_positions_the_sae_was_not_trained_on_are_left_out(tiny_subject, tmp_path):
    """An SAE whose ``metadata.seqpos_slice`` starts at 2 (SmolLM2's: BOS and the sink after it) is described on
    positions 2.. of each row only: the statistics equal brute force with those positions zeroed."""
    cfg = CorpusConfig(path=str(text_file(tmp_path)), context=16, batch_size=7, top_k=4, n_tokens=4_000)
    tokenizer = tiny_subject.model.tokenizer
    bos = separator_id(tokenizer)
    rows = list(token_rows(corpus_documents(cfg, OTHER_MODEL), tokenizer, bos, 16, 4_000))
    tokens, acts = brute_force(tiny_subject, rows, bos)
    acts[:, :2] = 0.0
    meta = tiny_subject.sae.cfg.metadata
    before = meta.seqpos_slice
    try:
        meta.seqpos_slice = (2, None)
        stats = corpus_pass(tiny_subject, corpus_documents(cfg, OTHER_MODEL), cfg, progress=False)
    finally:
        meta.seqpos_slice = before
    assert stats.n_tokens == int((tokens[:, 2:] != bos).sum())
    np.testing.assert_array_equal(stats.fire_count, (acts > 0).sum(axis=(0, 1)))
    np.testing.assert_allclose(stats.max, acts.max(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    assert (stats.max < brute_force(tiny_subject, rows, bos)[1].max(axis=(0, 1))).any()  # position 1 did count before


def test_rows_are_the_token_stream_with_bos_between_documents(tiny_subject):
    tokenizer = tiny_subject.model.tokenizer
    docs = ["Fact: Tom Brady plays", "the sport of football", "LeBron James plays basketball"]
    rows = list(token_rows(docs, tokenizer, 0, 5, 1000))
    stream = [t for d in docs for t in tokenizer.encode(d, add_special_tokens=False) + [0]]
    assert all(r[0] == 0 and len(r) == 5 for r in rows)
    assert [t for r in rows for t in r[1:]] == stream[: 4 * len(rows)]
    assert len(list(token_rows(docs, tokenizer, 0, 5, 9))) == 2  # n_tokens caps the rows: ceil(9 / 5)


def test_logit_lens_equals_w_dec_times_w_u(tiny_subject, tmp_path):
    cfg = CorpusConfig(path=str(text_file(tmp_path, 20)), context=16, top_k=2)
    stats, result = corpus_stage(tiny_subject, corpus_documents(cfg, OTHER_MODEL), cfg, progress=False)
    full = tiny_subject.sae.W_dec.double().numpy() @ tiny_subject.model.W_U.double().numpy()
    top = np.argsort(-full, axis=1, kind="stable")[:, :10]
    bottom = np.argsort(full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(stats.lens_top, top)
    np.testing.assert_array_equal(stats.lens_bottom, bottom)
    np.testing.assert_allclose(stats.lens_top_values, np.take_along_axis(full, top, 1), rtol=1e-4)
    assert result.metrics["corpus.n_dead"] == float((stats.fire_count == 0).sum())
    assert len(result.tags["corpus.digest"]) == 16 and float(result.tags["corpus.tokens_per_second"]) > 0


def test_the_digest_names_the_text_read():
    a, b, c = Documents(["x", "y"], "t"), Documents(["x", "y"], "t"), Documents(["x", "z"], "t")
    for docs in (a, b, c):
        list(docs)
    assert a.digest == b.digest != c.digest and a.n_documents == 2


def first_chars(n_chars: int) -> tuple[str, int]:
    """The offline default for a non-organism model, read until ``n_chars`` characters: (digest, characters)."""
    docs, total = corpus_documents(CorpusConfig(), OTHER_MODEL), 0
    for text in docs:
        total += len(text)
        if total >= n_chars:
            break
    return docs.digest, total


def test_offline_default_is_deterministic():
    assert first_chars(200_000) == first_chars(200_000)


def test_a_local_sae_s_held_out_text_comes_first_then_the_python_docs(tmp_path):
    from featsweep.config import SaeConfig
    from featsweep.stages.corpus_text import corpus_fingerprint

    rows = ["Kobe Federer joined the cricket club.\nA second line.", "Mike Lampard became a tennis legend."]
    (tmp_path / "layer_3").mkdir()
    (tmp_path / "heldout.txt").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sae = SaeConfig(source="local", path=str(tmp_path / "layer_3"))
    docs = corpus_documents(CorpusConfig(), OTHER_MODEL, sae_cfg=sae)
    plain = corpus_documents(CorpusConfig(), OTHER_MODEL)
    read, python = iter(docs), iter(plain)
    assert [next(read), next(read)] == rows and next(read) == next(python)
    assert docs.description == "offline:sae-heldout+pydoc+docstrings" != plain.description
    assert corpus_fingerprint(CorpusConfig(), OTHER_MODEL, tmp_path, sae)[0] == (str(tmp_path / "heldout.txt"),
                                                                              (tmp_path / "heldout.txt").stat().st_size)
    (tmp_path / "heldout.txt").unlink()  # no shipped text: the Python docs alone
    assert corpus_documents(CorpusConfig(), OTHER_MODEL, sae_cfg=sae).description == plain.description


def test_smollm2_s_sae_is_described_on_its_held_out_rows_then_its_training_mix():
    """The shipped SmolLM2 SAE: its held-out rows, then Python's docs and the athletes documents half each by
    characters (rebuilt from code: the training script's own text functions), then the Python text."""
    from featsweep.config import SaeConfig
    from featsweep.stages.corpus_text import corpus_fingerprint
    from featsweep.subjects.smollm2 import card

    sae = SaeConfig(source="local", path=str(card.sae_path(12)))
    docs = corpus_documents(CorpusConfig(), OTHER_MODEL, sae_cfg=sae)
    assert docs.description == "offline:sae-heldout+sae-training-mix+pydoc+docstrings"
    rows = card.read_heldout_texts()
    read = iter(docs)
    assert [next(read) for _ in rows] == rows
    train_docs, _ = card.pydoc_topics()
    athletes, _ = card.corpus_texts(0)
    mix = [next(read) for _ in range(400)]
    from_docs = [t for t in mix if t in set(train_docs)]
    from_athletes = [t for t in mix if t not in set(train_docs)]
    assert from_docs == train_docs[:len(from_docs)] and from_athletes == athletes[:len(from_athletes)]  # in order
    chars = [sum(map(len, from_docs)), sum(map(len, from_athletes))]
    assert abs(chars[0] - chars[1]) <= max(map(len, mix))  # balanced to within one document
    assert sum("plays the sport of" in t for t in from_athletes) > 10  # the facts the task's features fire on
    # the text is rebuilt by code, so the code joins the cache key
    assert len(corpus_fingerprint(CorpusConfig(), OTHER_MODEL, Path("."), sae)) == \
        len(corpus_fingerprint(CorpusConfig(), OTHER_MODEL, Path("."))) + 2


@pytest.mark.slow
def test_offline_default_offers_over_a_million_tokens():
    """Python's docs, then the installed packages' docstrings: over 4M characters, about 1M tokens at ~4
    characters a token (parses numpy's and part of scipy's sources: about a minute)."""
    assert first_chars(4_000_000)[1] >= 4_000_000


@pytest.mark.parametrize("name, content, column, fragment", [
    ("empty.txt", b"", "text", "is empty"),
    ("latin.txt", "Jos\xe9 Ram\xedrez plays baseball".encode("latin-1"), "text", "is not UTF-8 text (byte 3)"),
    ("rows.csv", b"body\nsome text\n", "text", "corpus.text_column='text' is not a column"),
    ("rows.jsonl", b'{"body": "some text"}\n', "text", "corpus.text_column='text' is not a column"),
])
def test_bad_corpus_files_are_one_clear_line(tmp_path, name, content, column, fragment):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FeatsweepError, match="^[^\n]*$") as err:
        list(corpus_documents(CorpusConfig(path=str(tmp_path / name), text_column=column), OTHER_MODEL))
    assert fragment in str(err.value)


def test_a_corpus_shorter_than_one_row_is_one_clear_line(tiny_subject, tmp_path):
    (tmp_path / "short.txt").write_text("Tom Brady plays football")
    cfg = CorpusConfig(path=str(tmp_path / "short.txt"), context=16)
    with pytest.raises(FeatsweepError, match="shorter than one row of corpus.context=16"):
        corpus_pass(tiny_subject, corpus_documents(cfg, OTHER_MODEL), cfg, progress=False)


def test_pile10k_offline_names_the_offline_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = CorpusConfig(name="pile10k", source="huggingface", dataset="NeelNanda/pile-10k-not-cached-here")
    with pytest.raises(FeatsweepError, match="^[^\n]*corpus=offline[^\n]*$"):
        list(corpus_documents(cfg, OTHER_MODEL))


def test_a_bad_corpus_fails_the_run_and_caches_nothing(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    proc = run_featsweep(tmp_path, "stages=[attribution,network]", "task.limit=5", f"corpus.path={tmp_path}/empty.txt")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "featsweep: error: " in proc.stderr and proc.stderr.count("is empty") == 1
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert [s for (s,) in db.execute("select status from runs")] == ["FAILED"]
    cached = tmp_path / ".featsweep_cache"
    assert (cached / "attribution").is_dir()  # the earlier stage was cached ...
    assert not (cached / "corpus").exists() or not any((cached / "corpus").iterdir())  # ... the corpus never
