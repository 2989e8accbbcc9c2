"""Shared fixtures: seeding, an isolated MLflow store, and a tiny random subject with a word-level tokenizer."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from featsweep.config import TaskConfig
from featsweep.stages.task import load_task
from helpers import athlete_texts, tiny_subject_from

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def seeded():
    """Seed torch, numpy and random before every test."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session")
def tiny_subject():
    """3-layer random HookedTransformer (d_model 32) with a random 128-latent SAE at blocks.1.hook_resid_pre."""
    return tiny_subject_from(athlete_texts())


@pytest.fixture(scope="session")
def tiny_task(tiny_subject):
    """The first 24 athletes prompts on the tiny subject's tokenizer."""
    return load_task(TaskConfig(limit=24), tiny_subject.model, seed=0)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store under tmp_path; the test runs from tmp_path."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/mlflow.db"
