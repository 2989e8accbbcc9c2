"""Network-stage benchmark: the igraph engine against the networkx reference, on planted structure.

A planted-structure matrix: ``n_prompts`` x ``n_features``, the features split into groups of 20..180 (seeded),
each feature ``a * z_group + sqrt(1 - a^2) * noise`` with loading ``a ~ U(0.55, 0.85)``, so within-group
correlations are ``a_i a_j`` in 0.30..0.72 and across groups ~0 (columns in random order, random SAE ids).
The stage runs at ``clustering.threshold=0.3``, ``clustering.max_features=null``, 50 nulls and 30 bootstraps (the
settings the targets were set for), then again with 50 rewirings added (``clustering.n_rewire``, H1's second
graph-aware null; its default is 300), and the other clustering defaults (greedy modularity, positive weighted
edges, ``clustering.centrality_sources=256``, ``clustering.n_jobs=null``: every core for the draws), everything
included (nulls with their cluster tests, bootstrap, rewired null, centralities, tables, figures, graphml).

    python benchmarks/network.py                               # 2,000 and 5,000 features x 1,000 prompts
    python benchmarks/network.py --sizes 300 600 --sub 60 120   # smoke test

The networkx reference (``network_stage(..., engine="networkx")``) would take hours at these sizes, so it runs
on random column subsets of the first matrix (``--sub``, two sizes), next to the igraph stage on the same
subsets (a direct ratio), and its time at the full size is extrapolated with the power law through the two
subset timings (stated in the output). ``speedup_vs_networkx`` is that extrapolated networkx time over the
measured igraph time at the first size. ``planted_ari`` is the smallest adjusted Rand index between the planted
groups and the stage's partition over the full sizes. Last line, JSON:
{"seconds_2000": s, "seconds_5000": s, "speedup_vs_networkx": x, "planted_ari": a, "cpu_seconds_2000": c,
"cpu_seconds_5000": c, "seconds_2000_rewire50": s, "seconds_5000_rewire50": s} (wall seconds, and the CPU seconds
of the same runs: this process and its worker processes; ``_rewire50``: with the 50 rewirings).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featsweep.config import ClusteringConfig  # noqa: E402
from featsweep.stages.network import network_stage  # noqa: E402


def planted(n_features: int, n_prompts: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Planted-structure attribution matrix and the planted group of each column."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n_features:
        sizes.append(int(rng.integers(20, 181)))
    sizes[-1] -= sum(sizes) - n_features
    truth = np.repeat(np.arange(len(sizes)), sizes)
    latent = rng.normal(size=(n_prompts, len(sizes)))
    load = rng.uniform(0.55, 0.85, n_features)
    values = latent[:, truth] * load + np.sqrt(1 - load**2) * rng.normal(size=(n_prompts, n_features))
    order = rng.permutation(n_features)
    ids = np.sort(rng.choice(24576, size=n_features, replace=False))
    return pd.DataFrame(values[:, order], columns=[int(i) for i in ids]), truth[order]


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the draws' worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_stage(matrix: pd.DataFrame, cfg: ClusteringConfig, engine: str):
    from joblib.externals.loky import get_reusable_executor

    t0, c0 = time.perf_counter(), _cpu()
    net, result = network_stage(matrix, cfg, seed=0, gen_max=None, neuronpedia_id=None, progress=False, engine=engine)
    elapsed = time.perf_counter() - t0
    get_reusable_executor().shutdown(wait=True)  # reap the workers so that their CPU time is counted
    cpu = _cpu() - c0
    plt.close("all")
    CPU[engine, matrix.shape[1]] = cpu
    return net, result, elapsed


CPU: dict = {}  # (engine, n_features) -> CPU seconds of the last run, workers included (a shared machine inflates wall)


def main(argv=None) -> dict:
    from sklearn.metrics import adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 5000], help="features of the two full runs")
    parser.add_argument("--sub", type=int, nargs=2, default=[150, 300],
                        help="feature subsets of the first size on which networkx runs")
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--nulls", type=int, default=50)
    parser.add_argument("--bootstraps", type=int, default=30)
    parser.add_argument("--rewires", type=int, default=50,
                        help="clustering.n_rewire of the second run of each size (default config: 300; 0: no second run)")
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    cfg = ClusteringConfig(threshold=args.threshold, n_null=args.nulls, n_bootstrap=args.bootstraps,
                           n_rewire=0, max_features=None, n_continuum=0)
    print(f"planted structure, {args.prompts} prompts, threshold {cfg.threshold}, {cfg.n_null} nulls, "
          f"{cfg.n_bootstrap} bootstraps (then {args.rewires} rewirings added), {cfg.algorithm.value}, edges={cfg.edges.value}, weighted={cfg.weighted}",
          flush=True)
    rewired_cfg = ClusteringConfig(**{**cfg.__dict__, "n_rewire": args.rewires})
    seconds, rewired, aris, first = {}, {}, [], None
    for n in args.sizes:
        matrix, truth = planted(n, args.prompts, seed=n)
        if args.rewires:
            _, _, rewired[n] = run_stage(matrix, rewired_cfg, "igraph")
            CPU["rewired", n] = CPU["igraph", n]
            print(f"igraph stage with {args.rewires} rewirings, {n} features: {rewired[n]:.1f} s wall, "
                  f"{CPU['rewired', n]:.1f} s CPU", flush=True)
        net, result, t = run_stage(matrix, cfg, "igraph")
        ari = adjusted_rand_score(truth, [net.partition[f] for f in matrix.columns])
        seconds[n], first = t, first or (matrix, truth)
        aris.append(ari)
        print(f"igraph stage, {n} features: {t:.1f} s wall, {CPU['igraph', n]:.1f} s CPU; {int(result.metrics['network.n_edges'])} edges, "
              f"{int(result.metrics['network.n_clusters'])} clusters ({len(set(truth))} planted), ARI {ari:.4f}, "
              f"modularity {result.metrics['network.modularity']:.4f}, matched-null modularity "
              f"{result.metrics['h1.null_matched_modularity_mean']:.4f}, bootstrap ARI "
              f"{result.metrics['h1.bootstrap_ari_mean']:.4f}, eigenvector {result.tags['network.eigenvector_method']}",
              flush=True)

    matrix, truth = first
    rng = np.random.default_rng(1)
    timings = []
    for k in args.sub:
        cols = np.sort(rng.choice(matrix.shape[1], size=k, replace=False))
        sub = matrix.iloc[:, cols]
        _, res_nx, t_nx = run_stage(sub, cfg, "networkx")
        net_ig, res_ig, t_ig = run_stage(sub, cfg, "igraph")
        same = {m: (res_nx.metrics[m], res_ig.metrics[m]) for m in ("network.n_edges", "network.modularity")}
        timings.append((k, t_nx, t_ig))
        print(f"subset of {k} features: networkx {t_nx:.1f} s, igraph {t_ig:.2f} s, ratio {t_nx / t_ig:.1f}x; CPU "
              f"{CPU['networkx', k]:.1f} s vs {CPU['igraph', k]:.2f} s "
              f"(edges {same['network.n_edges'][0]:.0f} vs {same['network.n_edges'][1]:.0f}, modularity "
              f"{same['network.modularity'][0]:.6f} vs {same['network.modularity'][1]:.6f})", flush=True)
    (k1, t1, _), (k2, t2, _) = timings
    exponent = float(np.log(t2 / t1) / np.log(k2 / k1))
    n0 = args.sizes[0]
    extrapolated = t2 * (n0 / k2) ** exponent
    speedup = extrapolated / seconds[n0]
    print(f"networkx time ~ n^{exponent:.2f} (fit through the two subsets); extrapolated to {n0} features: "
          f"{extrapolated:.0f} s ({extrapolated / 3600:.1f} h) -> speed-up {speedup:.0f}x over the measured "
          f"igraph {seconds[n0]:.1f} s (an extrapolation, not a measurement)", flush=True)
    out = {
        f"seconds_{args.sizes[0]}": round(seconds[args.sizes[0]], 1),
        f"seconds_{args.sizes[1]}": round(seconds[args.sizes[1]], 1),
        "speedup_vs_networkx": round(speedup, 1),
        "planted_ari": round(min(aris), 4),
        # process CPU seconds of the same runs: on a shared machine wall time also counts other users' work
        f"cpu_seconds_{args.sizes[0]}": round(CPU["igraph", args.sizes[0]], 1),
        f"cpu_seconds_{args.sizes[1]}": round(CPU["igraph", args.sizes[1]], 1),
        **{f"seconds_{n}_rewire{args.rewires}": round(t, 1) for n, t in rewired.items()},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
