"""Calibration of H1's test of discreteness (``h1.continuum_p``) and of the H1 verdict on matrices of known truth.

At the default preset's network settings (360 prompts x 100 features, threshold 0.3, min cluster size 10, greedy
modularity, positive weighted edges), the network stage's clustering and H1 statistics run on:

* continua (no groups): features at i.i.d. uniform places on a circle, a segment or a square sheet; every prompt
  is a sum of 60 Gaussian bumps of width ``w`` at random places with N(0, 1) heights, and a feature reads it at
  its place, plus independent noise (``signal`` = the share of a feature's variance that is the field), so the
  correlation decays smoothly with distance along the continuum (a generator of its own, not the test's model);
* one factor (no groups): every feature loads on one shared factor (loadings U(0.4, 0.8));
* planted groups: 5 groups of 25, 25, 20, 15 and 15 features, each feature loading on its group's factor
  (loadings U(0.55, 0.75); ``weak``: U(0.45, 0.65) plus a factor shared by all at 0.2), at an edge density
  comparable to the continua's.

For each it prints the fraction of repeats whose verdict is ``supported``, whose discreteness criterion passes
(``discrete``: ``h1.continuum_p < 0.05``; it bounds the supported fraction from above whatever the other nulls'
draws), whose metric criterion passes (``metric``: some metric beats both graph-aware nulls after Bonferroni),
whose best metric also beats the continuum draws (``metric_beyond_continua``, the per-metric reading that
survives a gradient; not part of the verdict), and medians of the statistics; JSON last. Below 180 draws of the
rewired and edge-matched nulls no metric can pass Bonferroni over the 9 metrics, so "supported" needs their
default draws; the discreteness column does not (20 continuum draws suffice).
Usage: python benchmarks/h1_discreteness.py [--repeats R] [--n-continuum N] [--n-null N] [--n-bootstrap N]
       [--scenarios circle_w0.05_s0.7,...] (the lists below; default all)
"""

from __future__ import annotations

import argparse
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from featsweep.config import ClusteringConfig
from featsweep.hypotheses.h1 import h1_statistics
from featsweep.stages.network import build_network

N_FEATURES, N_PROMPTS = 100, 360


def bump_field(places: np.ndarray, width: float, signal: float, rng: np.random.Generator, closed: bool = False,
               n_bumps: int = 60) -> np.ndarray:
    """A continuum: prompts x features, each prompt a sum of Gaussian bumps over the shape read at the places."""
    places = places.reshape(len(places), -1)
    centres = rng.uniform(size=(n_bumps, places.shape[1]))
    if closed:  # a circle of circumference 1: the distance wraps around
        d = np.abs(places[:, None, 0] - centres[None, :, 0])
        d2 = np.minimum(d, 1 - d) ** 2
    else:  # bumps also just outside the shape, so its ends are not emptier than its middle
        d2 = ((places[:, None, :] - (centres[None, :, :] * 1.2 - 0.1)) ** 2).sum(axis=-1)
    field = rng.standard_normal((N_PROMPTS, n_bumps)) @ np.exp(-d2 / (2 * width ** 2)).T
    field = (field - field.mean(axis=0)) / field.std(axis=0)
    return np.sqrt(signal) * field + np.sqrt(1 - signal) * rng.standard_normal(field.shape)


def one_factor(rng: np.random.Generator) -> np.ndarray:
    load = rng.uniform(0.4, 0.8, size=N_FEATURES)
    return rng.standard_normal((N_PROMPTS, 1)) * load + np.sqrt(1 - load ** 2) * rng.standard_normal((N_PROMPTS, N_FEATURES))


def planted_groups(rng: np.random.Generator, loading=(0.55, 0.75), shared: float = 0.0,
                   sizes=(25, 25, 20, 15, 15)) -> np.ndarray:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    load = rng.uniform(*loading, size=N_FEATURES)
    signal = load * rng.standard_normal((N_PROMPTS, len(sizes)))[:, labels] + shared * rng.standard_normal((N_PROMPTS, 1))
    noise = np.sqrt(np.clip(1 - load ** 2 - shared ** 2, 0.05, None))
    return signal + noise * rng.standard_normal((N_PROMPTS, N_FEATURES))


def _continuum(shape: str, width: float, signal: float):
    def make(rng):
        places = rng.uniform(size=(N_FEATURES, 2 if shape == "sheet" else 1))
        return bump_field(places, width, signal, rng, closed=shape == "circle")
    return make


SCENARIOS = {
    **{f"{shape}_w{w}_s{s}": ("continuum", _continuum(shape, w, s))
       for shape, widths in (("circle", (0.04, 0.08)), ("segment", (0.04, 0.08)), ("sheet", (0.08, 0.15)))
       for w in widths for s in (0.5, 0.8)},
    "one_factor": ("no groups", one_factor),
    "groups": ("groups", planted_groups),
    "groups_weak": ("groups", lambda rng: planted_groups(rng, loading=(0.45, 0.65), shared=0.2)),
}


def metric_criterion(m: dict) -> dict:
    """The per-metric figures: per null, the smallest adjusted p over the metrics; the verdict's criterion (d),
    the smallest over the metrics of the larger of the two graph-aware nulls' p, with its metric; and the
    gradient-proof reading of one metric alone, the same with the continuum draws' p as a third."""
    nulls = {"rewired": ".null_p_adj", "matched": ".matched_null_p_adj", "continuum": ".continuum_null_p_adj"}
    names = {k[3:-len(".null_p_adj")] for k in m if k.endswith(".null_p_adj") and not k.endswith(
        (".matched_null_p_adj", ".continuum_null_p_adj"))}
    per = {name: {null: m.get(f"h1.{name}{key}", np.nan) for null, key in nulls.items()} for name in names}
    out = {f"{null}_p_adj_min": min((p[null] for p in per.values()), default=np.nan) for null in nulls}
    graph = {name: max(p["rewired"], p["matched"]) for name, p in per.items()}
    best = min(graph, key=graph.get) if graph else ""
    return {**out, "metric_p_adj": graph.get(best, np.nan), "metric": best,
            "metric_continuum_p_adj": min((max(p.values()) for p in per.values()), default=np.nan)}


def run(scenario: str, repeats: int, cfg: ClusteringConfig) -> list[dict]:
    truth, make = SCENARIOS[scenario]
    rows = []
    for rep in range(repeats):
        rng = np.random.default_rng([rep, 21, len(scenario), sum(map(ord, scenario))])
        network = build_network(pd.DataFrame(make(rng)), cfg, rep, None, None)
        result = h1_statistics(network, cfg, rep, has_gen_max=False, progress=False)
        plt.close("all")
        m = result.metrics
        rows.append({"scenario": scenario, "truth": truth, "repeat": rep, "verdict": result.tags["h1.verdict"],
                     "reason": result.tags["h1.verdict_reason"],
                     "n_edges": network.graph.number_of_edges(), "n_kept": len(network.kept_clusters),
                     "continuum_p": m.get("h1.continuum_p", np.nan), "silhouette": m.get("h1.silhouette", np.nan),
                     "shape": result.tags.get("h1.continuum_shape", ""),
                     "matched_modularity_p": m.get("h1.matched_modularity_p", np.nan),
                     "bootstrap_ari": m.get("h1.bootstrap_ari_mean", np.nan), **metric_criterion(m)})
        print(json.dumps(rows[-1], default=str), flush=True)  # each repeat as it ends
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby("scenario", sort=False).agg(
        truth=("truth", "first"), repeats=("repeat", "count"),
        supported=("verdict", lambda v: float((v == "supported").mean())),
        discrete=("continuum_p", lambda p: float((p < 0.05).mean())),
        continuum_p_median=("continuum_p", "median"), silhouette_median=("silhouette", "median"),
        edges_median=("n_edges", "median"), kept_median=("n_kept", "median"),
        metric=("metric_p_adj", lambda p: float((p < 0.05).mean())),
        metric_beyond_continua=("metric_continuum_p_adj", lambda p: float((p < 0.05).mean())),
        ari_median=("bootstrap_ari", "median"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n-continuum", type=int, default=200, help="draws of each fitted continuum")
    parser.add_argument("--n-null", type=int, default=300, help="permutation and rewired null draws")
    parser.add_argument("--n-bootstrap", type=int, default=30)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    cfg = ClusteringConfig(threshold=0.3, n_null=args.n_null, n_rewire=args.n_null, n_bootstrap=args.n_bootstrap,
                           n_continuum=args.n_continuum)
    t0 = time.perf_counter()
    rows = []
    for name in args.scenarios.split(","):
        rows += run(name, args.repeats, cfg)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = summary(pd.DataFrame(rows))
    print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    print(json.dumps({"settings": {**vars(args), "n_prompts": N_PROMPTS, "n_features": N_FEATURES, "threshold": 0.3,
                                   "seconds": round(time.perf_counter() - t0)},
                      "scenarios": table.reset_index().to_dict("records")}))
