"""Builders shared by the tests (no test module imports another): tiny random subjects, fake stage
inputs, composed configs and real featsweep subprocesses against a real SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from featsweep.config import register_configs
from featsweep.hypotheses.stats import CENTRALITIES
from featsweep.subjects.loading import Subject, random_sae
from featsweep.stages.task import ATHLETES

TINY_HOOK = "blocks.1.hook_resid_pre"

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "featsweep" / "conf"


def run_featsweep(cwd, *args, module: str = "featsweep", timeout: int = 600, env: dict | None = None):
    """Run `python -m featsweep ARGS` as a real subprocess from ``cwd``; return the CompletedProcess."""
    full_env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", HYDRA_FULL_ERROR="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def mlflow_runs(tmp_path, experiment: str = "featsweep"):
    """All runs of the experiment in tmp_path's SQLite store, as a DataFrame (mlflow.search_runs)."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.search_runs(experiment_names=[experiment])


def compose_with(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def make_word_tokenizer(texts: list[str]):
    """A word-level tokenizer over ``texts`` that TransformerLens can use (BOS = id 0)."""
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(text)})
    vocab = {"<bos>": 0, "<pad>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>",
                                   unk_token="<unk>", add_bos_token=True, name_or_path="featsweep-tiny")


def tiny_subject_from(texts: list[str], n_layers: int = 3, d_model: int = 32, d_sae: int = 128, seed: int = 0):
    tokenizer = make_word_tokenizer(texts)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
        d_vocab=len(tokenizer), n_ctx=32, act_fn="gelu", normalization_type="LN", seed=seed, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right").eval()
    torch.manual_seed(seed)
    sae = random_sae(d_model, d_sae, encoder_gain=2.0, bias_mean=-0.3, bias_std=0.3)
    for p in list(model.parameters()) + list(sae.parameters()):
        p.requires_grad_(False)
    return Subject(model=model, sae=sae, hook_name=TINY_HOOK, layer=1, identity=f"tiny:{seed}",
                   neuronpedia_id=None)


def athlete_texts() -> list[str]:
    rows = pd.read_csv(ATHLETES)
    return [f"Fact: {n} plays the sport of {a}" for n, a in zip(rows["name"], rows["answer"])] + ["the a of in"]




def fake_attrs(subject, task, seed: int = 0):
    """Attributions-shaped input: a long table of activations (for local_max) and per-prompt resid grads."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(task.n):
        for pos in range(int(task.lengths[p])):
            for f in rng.choice(subject.d_sae, 6, replace=False):
                rows.append((p, pos, int(f), rng.normal(), rng.uniform(0.1, 4.0)))
    table = pd.DataFrame(rows, columns=["prompt", "position", "feature", "value", "activation"])
    return SimpleNamespace(table=table, n_prompts=task.n, d_sae=subject.d_sae, prefix_len=task.prefix_len,
                           lengths=task.lengths, resid_grad=resid_grads(subject, task))


def resid_grads(subject, task) -> list[np.ndarray]:
    """grad of task.logit_diff w.r.t. the hook activation, per prompt [T_p, d_model] (autograd)."""
    model, out = subject.model, []
    for i, tokens in enumerate(task.tokens):
        with torch.enable_grad():
            x = model(tokens[None], stop_at_layer=subject.layer).detach().requires_grad_(True)
            logits = model(x, start_at_layer=subject.layer)[:, -1]
            task.logit_diff(logits, [i]).sum().backward()
        out.append(x.grad[0].numpy().copy())
    return out


def fake_network(subject, n_per_cluster=(5, 5, 4), seed=0, kept=None):
    rng = np.random.default_rng(seed)
    total = sum(n_per_cluster)
    feats = rng.choice(subject.d_sae, total, replace=False)
    clusters = np.repeat(np.arange(len(n_per_cluster)), n_per_cluster)
    kept = list(range(len(n_per_cluster))) if kept is None else kept
    features = pd.DataFrame({"feature": feats, "cluster": clusters, "kept": np.isin(clusters, kept)})
    for c in CENTRALITIES:
        features[c] = rng.uniform(0, 1, total)
    features["mean_abs"] = rng.uniform(0, 1, total)
    features["gen_max_activation"] = rng.uniform(1, 3, total)
    corr = pd.DataFrame(np.corrcoef(rng.normal(size=(total, 30))), index=feats, columns=feats)
    return SimpleNamespace(features=features, corr=corr, kept_clusters=kept,
                           partition=dict(zip(feats.tolist(), clusters.tolist())))


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    """Every artifact path of a run, recursively."""
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


QUICK = ["stages=[task]"]
TASK_METRICS = ["task.n_prompts", "task.accuracy", "task.mean_prob", "task.mean_rank", "task.mean_top10_entropy"]




def llama_subject(seed: int = 0) -> Subject:
    """A small random Llama-style model (RMSNorm, rotary positions, grouped-query attention with 2 key/value
    heads for 4 query heads, gated SiLU MLP) with a random SAE at blocks.1, the shape of SmolLM2 in miniature."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=3, d_model=48, n_heads=4, n_key_value_heads=2, d_head=12, d_mlp=64,
                                  d_vocab=60, n_ctx=32, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                  final_rms=True, positional_embedding_type="rotary", rotary_dim=12,
                                  rotary_adjacent_pairs=False, rotary_base=10000, seed=seed, device="cpu",
                                  original_architecture="LlamaForCausalLM")
    model = HookedTransformer(cfg).eval()
    return Subject(model=model, sae=random_sae(48, 64, bias_mean=-0.2), hook_name=TINY_HOOK, layer=1,
                   identity="llama-test")


def assert_engine_matches_reference(subject, task, cfg, scales, conditions, means=None, engine=None,
                                    atol: float = 1e-4) -> None:
    """The fast engine and the plain reference hook give the same task performance under ``conditions``, and
    the intervention changes the output (so the comparison is not vacuous)."""
    from featsweep.config import SteeringConfig
    from featsweep.engines.intervention import Condition, SteeringEngine, reference_run
    from featsweep.results import PERFORMANCE_COLUMNS

    ref = reference_run(subject, task, cfg, scales, conditions, means)
    engine = engine or SteeringEngine(subject, task, cfg, scales, means)
    eng = engine.run(conditions, progress=False)
    for name in PERFORMANCE_COLUMNS:
        assert eng[name].shape == (len(conditions), task.n)
    np.testing.assert_allclose(eng["logit_diff"], ref["logit_diff"], atol=atol, rtol=0)
    np.testing.assert_allclose(eng["logit"], ref["logit"], atol=atol, rtol=0)
    np.testing.assert_allclose(eng["prob"], ref["prob"], atol=atol / 10, rtol=1e-4)
    np.testing.assert_allclose(eng["top10_entropy"], ref["top10_entropy"], atol=atol, rtol=0)
    assert np.abs(eng["rank"] - ref["rank"]).max() <= 1  # ties at float precision may swap one place
    untouched = SteeringConfig(mode="negative", positions=cfg.positions)
    base = reference_run(subject, task, untouched, scales, [Condition(conditions[0].features, 0.0)])["logit_diff"]
    assert np.abs(ref["logit_diff"] - base).max() > 1e-3
