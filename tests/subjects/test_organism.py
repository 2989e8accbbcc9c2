"""Tests of the model organism (featsweep/subjects/organism).

The card numbers are re-measured from the shipped weights, never copied; a
micro organism is trained from scratch and loaded through the same path.
"""

from __future__ import annotations

import json

import pytest
import torch

from featsweep.subjects.organism import ASSETS_DIR, available_layers, load_organism, measure_card
from featsweep.subjects.organism.card import measure_sae
from featsweep.subjects.organism.corpus import SPORTS, build_corpus, fact_task_athletes_in, load_task_athletes

SHIPPED = (ASSETS_DIR / "model_card.json").exists()


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED:
        pytest.skip("shipped organism assets are missing; run `python -m featsweep.subjects.organism.train`")
    torch.manual_seed(0)
    return load_organism()


@pytest.fixture(scope="module")
def remeasured(shipped):
    model, _, _ = shipped
    return measure_card(model)


@pytest.fixture(scope="module")
def remeasured_saes(shipped):
    model, _, _ = shipped
    out = {}
    for layer in available_layers():
        _, sae, meta = load_organism(layer=layer)
        out[str(layer)] = measure_sae(model, sae, meta["hook_name"])
    return out


def test_shipped_loads(shipped):
    model, sae, card = shipped
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    assert isinstance(model, HookedTransformer) and isinstance(sae, SAE)
    assert card["hook_name"] == f"blocks.{card['default_layer']}.hook_resid_pre" and card["layer"] == card["default_layer"]
    assert model.cfg.n_layers >= 4
    assert sae.cfg.d_in == model.cfg.d_model and sae.cfg.d_sae >= 8 * model.cfg.d_model
    assert model.to_tokens("Fact: x")[0, 0].item() == model.tokenizer.bos_token_id
    # the hook exists and the SAE fits it
    _, cache = model.run_with_cache("Fact: Derek Jeter plays the sport of", names_filter=card["hook_name"])
    assert cache[card["hook_name"]].shape[-1] == sae.cfg.d_in


def test_an_sae_at_every_layer(shipped):
    model, _, card = shipped
    assert available_layers() == list(range(model.cfg.n_layers))
    for layer in available_layers():
        _, sae, meta = load_organism(layer=layer)
        assert meta["hook_name"] == f"blocks.{layer}.hook_resid_pre" and sae.cfg.d_in == model.cfg.d_model
    with pytest.raises(LookupError, match="sae.layer can be one of: 0, 1, 2, 3"):
        load_organism(layer=model.cfg.n_layers)


@pytest.mark.parametrize("key,tol", [("task_accuracy", 1e-9), ("task_mean_prob", 1e-4)])
def test_card_is_remeasured(shipped, remeasured, key, tol):
    card = json.loads((ASSETS_DIR / "model_card.json").read_text())
    assert remeasured[key] == pytest.approx(card[key], abs=tol)


@pytest.mark.parametrize(
    "key,tol",
    [("sae_explained_variance", 1e-4), ("sae_mean_l0", 1e-3), ("sae_dead_fraction", 2e-3),
     ("n_features_active_ge90pct_task_prompts", 1)],
)
def test_sae_cards_are_remeasured(remeasured_saes, key, tol):
    card = json.loads((ASSETS_DIR / "model_card.json").read_text())
    assert set(card["saes"]) == set(remeasured_saes)
    for layer, measured in remeasured_saes.items():
        assert measured[key] == pytest.approx(card["saes"][layer][key], abs=tol), f"layer {layer}"


def test_card_targets(remeasured, remeasured_saes):
    # recomputed from the weights, not read from the card
    assert 0.5 <= remeasured["task_accuracy"] <= 0.95
    for measured in remeasured_saes.values():
        assert measured["sae_explained_variance"] >= 0.8
        assert 3 <= measured["sae_mean_l0"] <= 64


def test_card_records_provenance():
    if not SHIPPED:
        pytest.skip("no shipped card")
    card = json.loads((ASSETS_DIR / "model_card.json").read_text())
    for k in ("seed", "command", "final_train_loss", "train_wall_time_s", "d_model", "default_layer", "saes"):
        assert k in card
    for sae_card in card["saes"].values():
        assert {"hook_name", "d_sae"} <= set(sae_card)
    assert card["command"].startswith("python -m featsweep.subjects.organism.train")


def test_quick_train_from_scratch(tmp_path):
    from featsweep.subjects.organism.train import main

    main(["--quick", "--out", str(tmp_path), "--seed", "1"])  # speed is not asserted here (no timed tests)
    model, sae, card = load_organism(tmp_path)
    assert card["quick"] is True and card["hook_name"] == "blocks.2.hook_resid_pre"
    assert card["assets_dir"] == str(tmp_path)
    assert available_layers(tmp_path) == list(range(model.cfg.n_layers)) and set(card["saes"]) == {"0", "1", "2"}
    _, sae0, meta0 = load_organism(tmp_path, layer=0)
    assert meta0["hook_name"] == "blocks.0.hook_resid_pre" and sae0.cfg.d_in == model.cfg.d_model
    assert sae.cfg.d_in == model.cfg.d_model
    logits = model("Fact: Derek Jeter plays the sport of")
    assert logits.shape[-1] == model.cfg.d_vocab and torch.isfinite(logits).all()


def test_sports_are_single_tokens(shipped):
    model, _, _ = shipped
    for s in SPORTS:
        assert model.to_tokens(" " + s, prepend_bos=False).shape[-1] == 1, s
    answers = {a for _, a in load_task_athletes()}
    assert answers <= set(SPORTS)


def test_fact_template_for_at_most_half_the_task_athletes():
    corpus = build_corpus(seed=0)
    names = [n for n, _ in load_task_athletes()]
    seen = fact_task_athletes_in(corpus.training_sentences(), names)
    assert seen == set(corpus.fact_task_names)
    assert 0 < len(seen) <= len(names) // 2
    assert len(corpus.athletes) >= 300 and len(corpus.meta["relations"]) >= 4
    # held-out text is never trained on
    train = set(corpus.training_sentences())
    assert not (set(corpus.generic) & train) and not (set(corpus.heldout) & train)
    # the same seed gives the same corpus
    assert build_corpus(seed=0).docs == corpus.docs


def test_shipped_corpus_meta_matches_generator():
    if not SHIPPED:
        pytest.skip("no shipped assets")
    meta = json.loads((ASSETS_DIR / "corpus_meta.json").read_text())
    corpus = build_corpus(seed=meta["seed"])
    assert meta["fact_task_athletes"] == corpus.fact_task_names
    assert len(meta["fact_task_athletes"]) <= meta["n_task_athletes"] // 2


def test_missing_assets_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m featsweep.subjects.organism.train"):
        load_organism(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m featsweep.subjects.organism.train"):
        load_organism(tmp_path / "nope")


def test_organism_task_file_is_every_corpus_athlete(tmp_path):
    from featsweep.subjects.organism.corpus import ORGANISM_TASK_CSV, write_organism_task

    corpus = build_corpus(seed=0)
    fresh = write_organism_task(corpus, tmp_path / "organism_athletes.csv")
    assert fresh.read_text() == ORGANISM_TASK_CSV.read_text()
    assert len(ORGANISM_TASK_CSV.read_text().splitlines()) == 1 + len(corpus.athletes)


@pytest.fixture(scope="module")
def control():
    if not SHIPPED:
        pytest.skip("no shipped assets")
    from featsweep.control import build_network

    return build_network()


def test_positive_control_is_remeasured(control):
    # the default run's network, rebuilt from the weights by the pipeline's own functions, against the card
    from featsweep.control import NETWORK_KEYS, cluster_sports

    card = json.loads((ASSETS_DIR / "model_card.json").read_text())["positive_control"]
    for key in NETWORK_KEYS:
        assert control["metrics"][key] == pytest.approx(card[key], rel=1e-6, abs=1e-9), key
    assert control["subject"].hook_name == card["hook_name"]
    clusters = cluster_sports(control)
    assert set(clusters) == set(card["clusters"])
    for c, measured in clusters.items():
        assert measured["eta2_sport"] == pytest.approx(card["clusters"][c]["eta2_sport"], abs=1e-6)


def test_positive_control_finds_structure(control):
    # the bar for a positive control, on numbers re-measured from the weights
    m = control["metrics"]
    assert m["h1.matched_modularity_z"] >= 3
    assert m["h1.bootstrap_ari_mean"] >= 0.6
    assert m["network.n_edges"] >= 5 * m["h1.null_edges_mean"]
    assert m["network.n_kept_clusters"] >= 2


@pytest.mark.slow
def test_default_factor_does_not_floor_the_task(control):
    from featsweep.control import steering_single_mean_prob

    card = json.loads((ASSETS_DIR / "model_card.json").read_text())["positive_control"]
    single = steering_single_mean_prob(control)
    base = control["task_metrics"]["task.mean_prob"]
    assert 0.25 <= single / base <= 0.75
    assert single == pytest.approx(card["steering.single.mean_prob"], abs=1e-4)
