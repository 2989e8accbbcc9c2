"""Shared fixtures: seeding, an isolated MLflow store, and a tiny random subject with a word-level tokenizer."""

from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(autouse=True)
def seeded():
    """Seed torch, numpy and random before every test."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def make_word_tokenizer(texts: list[str]):
    """A word-level tokenizer over ``texts`` that TransformerLens can use (BOS = id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(text)})
    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>", add_bos_token=True, name_or_path="featsweep-tiny")


def tiny_subject_from(texts: list[str], n_layers: int = 3, d_model: int = 32, d_sae: int = 128, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from featsweep.subject import Subject

    tokenizer = make_word_tokenizer(texts)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
        d_vocab=len(tokenizer), n_ctx=32, act_fn="gelu", normalization_type="LN", seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right").eval()
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_model, d_sae=d_sae)).eval()
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        sae.W_enc.copy_(sae.W_dec.T * 2.0)
        sae.b_enc.normal_(-0.3, 0.3)
    for p in list(model.parameters()) + list(sae.parameters()):
        p.requires_grad_(False)
    return Subject(model=model, sae=sae, hook_name=TINY_HOOK, layer=1, identity=f"tiny:{seed}",
                   neuronpedia_id=None, generic_texts=[" ".join(texts[i : i + 3]) for i in range(0, 30, 3)])


def athlete_texts() -> list[str]:
    from featsweep.task import ATHLETES

    rows = pd.read_csv(ATHLETES)
    return [f"Fact: {n} plays the sport of {a}" for n, a in zip(rows["name"], rows["answer"])] + ["the a of in"]


@pytest.fixture(scope="session")
def tiny_subject():
    """3-layer random HookedTransformer (d_model 32) with a random 128-latent SAE at blocks.1.hook_resid_pre."""
    return tiny_subject_from(athlete_texts())


@pytest.fixture(scope="session")
def tiny_task(tiny_subject):
    """The first 24 athletes prompts on the tiny subject's tokenizer."""
    from featsweep.config import TaskConfig
    from featsweep.task import load_task

    return load_task(TaskConfig(limit=24), tiny_subject.model, seed=0)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store under tmp_path; the test runs from tmp_path."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/mlflow.db"


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_featsweep(cwd, *args, module: str = "featsweep", timeout: int = 600, env: dict | None = None):
    """Run `python -m featsweep ARGS` as a real subprocess from ``cwd``; return the CompletedProcess."""
    import subprocess
    import sys

    full_env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HYDRA_FULL_ERROR="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def mlflow_runs(tmp_path, experiment: str = "featsweep"):
    """All runs of the experiment in tmp_path's SQLite store, as a DataFrame (mlflow.search_runs)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])
