"""The task: answer tokens, the seeded contrast, prompts from files, and per-prompt metrics vs a plain calculation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax
from scipy.stats import entropy

from featsweep.config import Contrast, MultiTokenPolicy, TaskConfig
from featsweep.errors import FeatsweepError
from featsweep.stages.task import ATHLETES, baseline_performance, load_task, shared_prefix_len


def test_athletes_file_mix_and_football_soccer_split():
    rows = pd.read_csv(ATHLETES)
    assert len(rows) == 100 and rows["name"].is_unique
    counts = rows["answer"].value_counts()
    assert counts["baseball"] == 27 and counts["basketball"] == 18 and counts["football"] == 17 and counts["soccer"] == 15
    assert set(rows.loc[rows["answer"] == "football", "sport"]) == {"American football"}
    assert set(rows.loc[rows["answer"] == "soccer", "sport"]) == {"soccer"}
    assert rows["answer"].iloc[:5].nunique() == 5  # task.limit=5 still has several answers


def test_prompts_and_answers(tiny_task):
    assert tiny_task.frame["prompt"].iloc[0] == "Fact: Alex Rodriguez plays the sport of"
    assert (tiny_task.frame["answer"].str.startswith(" ")).all()
    assert tiny_task.prefix_len == 3  # BOS, "Fact", ":" (word-level tokenizer)


def test_incorrect_answer_is_seeded_and_never_the_correct_one(tiny_subject):
    a = load_task(TaskConfig(limit=40), tiny_subject.model, seed=1)
    b = load_task(TaskConfig(limit=40), tiny_subject.model, seed=1)
    c = load_task(TaskConfig(limit=40), tiny_subject.model, seed=2)
    assert a.frame["incorrect"].tolist() == b.frame["incorrect"].tolist()
    assert a.frame["incorrect"].tolist() != c.frame["incorrect"].tolist()
    assert (a.frame["incorrect"] != a.frame["answer"]).all()


def test_multi_token_answer_gives_the_clear_error_and_drop_works(tiny_subject, tmp_path):
    path = tmp_path / "task.csv"
    pd.DataFrame({"name": ["Tom Brady", "Wayne Gretzky", "Roger Federer"], "answer": ["football", "ice hockey", "tennis"]}).to_csv(path, index=False)
    with pytest.raises(FeatsweepError) as info:
        load_task(TaskConfig(path=str(path)), tiny_subject.model, seed=0)
    assert "' ice hockey'" in str(info.value) and "task.on_multi_token=drop" in str(info.value)
    task = load_task(TaskConfig(path=str(path), on_multi_token=MultiTokenPolicy.drop), tiny_subject.model, seed=0)
    assert task.frame["subject"].tolist() == ["Tom Brady", "Roger Federer"]


def test_task_from_jsonl_with_named_columns(tiny_subject, tmp_path):
    path = tmp_path / "task.jsonl"
    pd.DataFrame({"who": ["Tom Brady", "Roger Federer"], "label": ["football", "tennis"]}).to_json(path, orient="records", lines=True)
    cfg = TaskConfig(path=str(path), subject_column="who", answer_column="label", template="Fact: {who} plays the sport of")
    task = load_task(cfg, tiny_subject.model, seed=0)
    assert task.frame["prompt"].tolist() == ["Fact: Tom Brady plays the sport of", "Fact: Roger Federer plays the sport of"]


@pytest.mark.parametrize("cfg,fragment", [
    (TaskConfig(path="/nonexistent.csv"), "does not exist"),
    (TaskConfig(answer_column="sportz"), "no column 'sportz'"),
])
def test_bad_task_input(tiny_subject, cfg, fragment):
    with pytest.raises(FeatsweepError, match=fragment):
        load_task(cfg, tiny_subject.model, seed=0)


def test_too_few_prompts_are_refused_by_the_schema():
    with pytest.raises(FeatsweepError, match="task.limit=1"):
        TaskConfig(limit=1)


def test_shared_prefix_len():
    toks = [torch.tensor([0, 5, 6, 7, 9]), torch.tensor([0, 5, 6, 8, 9, 9]), torch.tensor([0, 5, 6, 7])]
    assert shared_prefix_len(toks) == 3
    assert shared_prefix_len([torch.tensor([0, 1]), torch.tensor([0, 1])]) == 1  # the last position is never prefix


@pytest.mark.parametrize("contrast", [Contrast.random_other, Contrast.mean_others])
def test_baseline_metrics_match_a_plain_calculation(tiny_subject, contrast):
    task = load_task(TaskConfig(limit=30, contrast=contrast), tiny_subject.model, seed=0)
    table = baseline_performance(tiny_subject.model, task, batch_size=7)
    answers = task.answer_ids.numpy()
    for i in [0, 4, 17, 29]:
        logits = tiny_subject.model(task.tokens[i][None])[0, -1].double().numpy()
        c, w = task.frame.loc[i, "correct_id"], task.frame.loc[i, "incorrect_id"]
        row = table.iloc[i]
        assert row["rank"] == int((logits > logits[c]).sum())
        assert row["prob"] == pytest.approx(np.exp(log_softmax(logits)[c]), rel=1e-4)
        assert row["logit"] == pytest.approx(logits[c], abs=1e-4)
        top10 = np.sort(logits)[-10:]
        assert row["top10_entropy"] == pytest.approx(entropy(np.exp(top10 - top10.max())), abs=1e-4)
        other = logits[w] if contrast is Contrast.random_other else logits[answers[answers != c]].mean()
        assert row["logit_diff"] == pytest.approx(logits[c] - other, abs=1e-4)


def test_filter_keeps_prompts_ranked_first_and_counts_the_rest():
    import torch

    from featsweep.config import TaskFilter
    from featsweep.stages.task import task_stage
    from helpers import athlete_texts, tiny_subject_from

    subject = tiny_subject_from(athlete_texts())
    full = load_task(TaskConfig(limit=30), subject.model, seed=0)
    favoured = int(full.correct_ids[0])  # make one answer the model's top token everywhere
    with torch.no_grad():
        subject.model.unembed.b_U[favoured] += 1e4
    kept = load_task(TaskConfig(limit=30, filter=TaskFilter.correct_top1), subject.model, seed=0)
    ranks = baseline_performance(subject.model, full)["rank"].to_numpy()
    assert list(kept.frame["prompt"]) == list(full.frame["prompt"][ranks == 0])
    assert kept.n_filtered_out == 30 - kept.n == int((ranks != 0).sum()) > 0
    assert (baseline_performance(subject.model, kept)["rank"] == 0).all()
    _, result = task_stage(subject.model, kept, 8)
    assert result.metrics["task.n_filtered_out"] == kept.n_filtered_out and result.metrics["task.accuracy"] == 1.0
    with torch.no_grad():  # nothing ranked first: the filter is not applied, and says so
        subject.model.unembed.b_U[favoured] -= 2e4
    none = load_task(TaskConfig(limit=30, filter=TaskFilter.correct_top1), subject.model, seed=0)
    assert none.n == 30 and none.n_filtered_out == 0 and "not applied" in none.filter_note
    assert "task.filter_skipped" in task_stage(subject.model, none, 8)[1].tags


def test_prefix_is_shared_and_a_prefix_naming_task_subjects_is_flagged(tiny_subject, caplog):
    plain = load_task(TaskConfig(limit=6), tiny_subject.model, seed=0)
    shots = "Fact: Someone plays the sport of golf\n"
    fewshot = load_task(TaskConfig(limit=6, prefix=shots), tiny_subject.model, seed=0)
    assert all(p.startswith(shots) for p in fewshot.frame["prompt"])
    assert fewshot.prefix_len > plain.prefix_len  # the prefix's positions count as shared prefix
    assert not any("task.prefix names" in r.message for r in caplog.records)
    leaked = f"Fact: {plain.frame['subject'][0]} plays the sport of golf\n"
    load_task(TaskConfig(limit=6, prefix=leaked), tiny_subject.model, seed=0)
    assert any("task.prefix names 1 of the task's own subjects" in r.message for r in caplog.records)
