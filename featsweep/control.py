"""The organism as a positive control: re-measure what the default run finds, from the weights.

    python -m featsweep.control            # print the default run's network numbers
    python -m featsweep.control --write    # ... and record them in the organism's model_card.json
    python -m featsweep.control --steering # ... also single-feature steering (slower)

The default preset (``featsweep/conf/experiment/organism.yaml``) builds the network exactly as
``python -m featsweep`` does (task, attribution, the corpus stage's max activations, clustering with its
permutation null and bootstrap), through the same functions, without MLflow. Besides the pipeline's
own metrics it describes the kept clusters by the prompts' sports: for each kept cluster the mean
z-scored attribution of its features per sport (``sport_profile``) and the share of the variance of
that cluster score explained by the sport (``eta2_sport``). ``steering_push_ratio`` is the mean push of
a steered feature (``factor * scale_i * ||d_i||``) over the mean residual norm at the hook.
Nothing here is tuned to the organism: it is the pipeline's own code at the preset's settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from featsweep.stages.attribution import attribution_stage
from featsweep.config import checked, register_configs
from featsweep.stages.steering import steering_stage
from featsweep.stages.network import network_stage
from featsweep.subjects.organism.load import ASSETS_DIR, CARD
from featsweep.engines.intervention import steering_scales
from featsweep.stages.corpus import corpus_stage
from featsweep.stages.corpus_text import corpus_documents
from featsweep.subjects.loading import load_subject
from featsweep.stages.task import load_task, task_stage
from featsweep import CONF_DIR

CONF = CONF_DIR

#: the run metrics the card records (``network.*``/``h1.*`` from the network stage, ``task.*`` from the task)
NETWORK_KEYS = ("network.n_edges", "h1.null_edges_mean", "network.n_kept_clusters", "h1.matched_modularity_z",
                "h1.bootstrap_ari_mean", "network.modularity")


def compose_default(overrides: Sequence[str] = ()):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return checked(compose(config_name="config", overrides=list(overrides)))


def build_network(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the default config's task, attribution and network stages; return the pieces."""
    cfg = compose_default(overrides)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    subject = load_subject(cfg)
    task = load_task(cfg.task, subject.model, cfg.seed)
    baseline, task_result = task_stage(subject.model, task, cfg.task.batch_size)
    attributed, _ = attribution_stage(subject, task, cfg.attribution)
    attrs, matrix = attributed.attrs, attributed.matrix
    assets = Path(cfg.model.assets_dir) if cfg.model.assets_dir else ASSETS_DIR
    gen_max = corpus_stage(subject, corpus_documents(cfg.corpus, cfg.model, assets, cfg.sae), cfg.corpus, progress=False)[0].max
    network, result = network_stage(matrix, cfg.clustering, cfg.seed, gen_max, None, progress=False)
    return dict(cfg=cfg, subject=subject, task=task, baseline=baseline, task_metrics=task_result.metrics,
                attrs=attrs, matrix=matrix, gen_max=gen_max, network=network, metrics=result.metrics)


def _steered_features(network) -> np.ndarray:
    kept = [int(c) for c in network.kept_clusters]
    table = network.features
    return table.loc[table["cluster"].isin(kept), "feature"].astype(int).to_numpy()


def push_ratio(built: dict[str, Any], factor: float | None = None) -> dict[str, float]:
    """Mean ``factor * scale_i * ||d_i||`` over the steered features, over the mean residual norm at the hook
    (task prompts, BOS excluded)."""
    cfg, subject, task = built["cfg"], built["subject"], built["task"]
    factor = float(cfg.steering.factor if factor is None else factor)
    features = _steered_features(built["network"])
    scales = steering_scales(cfg.steering.scale, subject.d_sae, built["gen_max"], built["attrs"])
    dec_norms = subject.sae.W_dec.detach().float().norm(dim=-1).cpu().numpy()
    push = float(np.mean(scales[features] * dec_norms[features])) if len(features) else float("nan")
    norms = []
    with torch.no_grad():
        for _, tokens in task.batches(64):
            _, cache = subject.model.run_with_cache(tokens.to(subject.device), names_filter=subject.hook_name,
                                                    stop_at_layer=subject.layer + 1)
            norms.append(cache[subject.hook_name][:, 1:].float().norm(dim=-1).flatten().cpu())
    resid = float(torch.cat(norms).mean())
    return {"resid_norm": resid, "push_per_unit_factor": push, "factor": factor, "ratio": factor * push / resid}


def cluster_sports(built: dict[str, Any]) -> dict[str, Any]:
    """Per kept cluster: its size, mean z-scored attribution per sport, and eta-squared of that score by sport."""
    matrix, network, task = built["matrix"], built["network"], built["task"]
    sport = np.array([str(a).strip() for a in task.frame["answer"]])
    table = network.features
    out: dict[str, Any] = {}
    for c in [int(c) for c in network.kept_clusters]:
        feats = table.loc[table["cluster"] == c, "feature"].astype(int).tolist()
        x = matrix[[f for f in matrix.columns if int(f) in set(feats)]].to_numpy(dtype=float)
        z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        score = z.mean(1)
        sports = sorted(set(sport))
        means = {s: float(score[sport == s].mean()) for s in sports}
        between = sum((sport == s).sum() * (m - score.mean()) ** 2 for s, m in means.items())
        total = float(((score - score.mean()) ** 2).sum())
        out[str(c)] = {"size": len(feats), "eta2_sport": between / total if total > 0 else float("nan"),
                       "sport_profile": {s: round(m, 3) for s, m in means.items()}}
    return out


def steering_single_mean_prob(built: dict[str, Any]) -> float:
    """``steering.single.mean_prob`` of the default run, through the pipeline's steering stage."""
    cfg = built["cfg"]
    _, result = steering_stage(built["subject"], built["task"], built["attrs"], built["network"], built["baseline"],
                            built["gen_max"], cfg.steering, cfg.seed)
    return float(result.metrics["steering.single.mean_prob"])


def measure_positive_control(overrides: Sequence[str] = (), steering: bool = False) -> dict[str, Any]:
    built = build_network(overrides)
    out: dict[str, Any] = {"command": "python -m featsweep" + "".join(f" {o}" for o in overrides),
                           "hook_name": built["subject"].hook_name,
                           "task.n_prompts": int(built["task"].n),
                           "task.mean_prob": float(built["task_metrics"]["task.mean_prob"])}
    out.update({k: float(built["metrics"][k]) for k in NETWORK_KEYS if k in built["metrics"]})
    out["clusters"] = cluster_sports(built)
    out["steering_push"] = push_ratio(built)
    if steering:
        out["steering.single.mean_prob"] = steering_single_mean_prob(built)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m featsweep.control", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m featsweep")
    p.add_argument("--write", action="store_true", help=f"record the numbers in {ASSETS_DIR / CARD}")
    p.add_argument("--steering", action="store_true", help="also run single-feature steering (slower)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    measured = measure_positive_control(args.overrides, steering=args.steering)
    print(json.dumps(measured, indent=1))
    if args.write:
        card = json.loads((ASSETS_DIR / CARD).read_text())
        card["positive_control"] = measured
        (ASSETS_DIR / CARD).write_text(json.dumps(card, indent=1))
    return measured


if __name__ == "__main__":
    main()
