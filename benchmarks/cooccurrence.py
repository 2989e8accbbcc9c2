"""Speed and memory of the corpus co-occurrence counter (featsweep/engines/cooccurrence.py). JSON last.

    python benchmarks/cooccurrence.py                 # 1M synthetic tokens per size (~10 minutes on 2 cores)
    python benchmarks/cooccurrence.py --tokens 200000  # quicker

Sections, each in its own process (so each peak RSS is its own):

* ``organism``: codes shaped like the organism's SAE (1,024 latents, ~35 active per token, heavy-tailed
  densities): the sparse counter's tokens/second beside a dense ``B.T @ B`` accumulated in a d x d float32
  torch matrix, measured side by side, and ``exact`` (the two give the same counts).
* ``synthetic_<d>``: heavy-tailed synthetic codes with ~64 active latents per token at 24,576 and 65,536
  latents (independent latents: every co-firing is chance, the worst case for the pair count), ``--tokens``
  tokens: seconds for counts + Jaccard + auto threshold + communities (synthetic generation not timed), pairs kept
  at the default floor, peak RSS, and the bytes a dense int64 d x d matrix would take; ``exact`` against a dense
  product on a 2,000-latent subset (the counts, and the kept pairs against brute force).
* ``gpt2_random_sae``: a random SAE Lens SAE of GPT-2 small's shape (768 -> 24,576, encoder bias set for ~64
  active latents per token) on ``--sae-tokens`` Gaussian residual vectors through ``CooccurrenceCounter.update``
  (the dense-activation entry point).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from featsweep.config import CooccurrenceConfig

BATCH = 4096
EXACT_BATCHES = 2  # the exact check covers the first 8,192 tokens (a dense 2,000-latent product per batch)


def heavy_tailed_densities(d: int, l0: float, seed: int) -> np.ndarray:
    """Per-latent firing probabilities with a Zipf-like tail (as SAE densities are), summing to ``l0``."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, d + 1) ** 0.8
    p = rng.permutation(p)
    p = p / p.sum() * l0
    return np.minimum(p, 0.5)


def synthetic_batches(d: int, l0: float, n_tokens: int, seed: int):
    """(unit, latent) index pairs of sparse codes: each token draws ~l0 latents by their densities."""
    rng = np.random.default_rng(seed + 1)
    p = heavy_tailed_densities(d, l0, seed)
    probs = p / p.sum()
    for start in range(0, n_tokens, BATCH):
        n = min(BATCH, n_tokens - start)
        draws = rng.choice(d, size=(n, int(l0)), p=probs)
        draws.sort(axis=1)
        keep = np.ones_like(draws, bool)
        keep[:, 1:] = draws[:, 1:] != draws[:, :-1]  # one entry per (token, latent)
        units = np.repeat(np.arange(n), int(l0)).reshape(n, -1)
        yield units[keep], draws[keep], n


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def organism_section(n_tokens: int) -> dict:
    import torch

    from featsweep.engines.cooccurrence import CooccurrenceCounter, pair_counts

    d = 1024
    batches = list(synthetic_batches(d, 35, n_tokens, seed=0))
    counter = CooccurrenceCounter(d)
    start = time.perf_counter()
    for units, latents, n in batches:
        counter.add_codes(units, latents, n)
    counts = counter.result()
    pairs, _ = pair_counts(counts, "jaccard", 0.0)  # a floor of 0: every pair that co-fired, to compare all
    sparse_s = time.perf_counter() - start
    dense = torch.zeros(d, d)
    start = time.perf_counter()
    for units, latents, n in batches:
        b = torch.zeros(n, d)
        b[torch.as_tensor(units), torch.as_tensor(latents)] = 1.0
        dense += b.T @ b
    dense_s = time.perf_counter() - start
    dense = dense.numpy().astype(np.int64)
    exact = bool(np.array_equal(np.triu(dense, 1), pairs.toarray()) and np.array_equal(np.diag(dense), counts.per_latent))
    return {"d_sae": d, "tokens": n_tokens, "sparse_tokens_per_s": n_tokens / sparse_s,
            "dense_tokens_per_s": n_tokens / dense_s, "sparse_over_dense_speed": dense_s / sparse_s,
            "n_pairs": pairs.nnz, "exact": exact, "peak_rss_mb": peak_mb()}


def kept_reference(dense: np.ndarray, n_units: int, floor: float) -> np.ndarray:
    """The kept pairs by brute force: the upper triangle of a dense count matrix where the Jaccard reaches the floor."""
    from featsweep.engines.cooccurrence import measure_values

    diag = np.diag(dense)
    jaccard = measure_values(dense, diag[:, None], diag[None, :], n_units, "jaccard")
    return np.triu(np.where((dense > 0) & (jaccard >= floor), dense, 0), 1)


def synthetic_section(d: int, n_tokens: int) -> dict:
    from featsweep.engines.dictionary_graph import auto_threshold, build_dictionary_graph
    from featsweep.engines.cooccurrence import CooccurrenceCounter, pair_counts

    import torch

    floor = CooccurrenceConfig().floor
    counter = CooccurrenceCounter(d)
    subset = np.sort(np.random.default_rng(2).choice(d, 2000, replace=False))
    index = np.full(d, -1)
    index[subset] = np.arange(2000)
    dense = torch.zeros(2000, 2000, dtype=torch.float64)
    exact = None
    count_s = 0.0
    for k, (units, latents, n) in enumerate(synthetic_batches(d, 64, n_tokens, seed=0)):
        t = time.perf_counter()
        counter.add_codes(units, latents, n)
        count_s += time.perf_counter() - t
        if k < EXACT_BATCHES:  # the reference: a dense product on the subset over the first batches (not timed)
            keep = index[latents] >= 0
            b = torch.zeros(n, 2000)
            b[torch.as_tensor(units[keep]), torch.as_tensor(index[latents[keep]])] = 1.0
            dense += (b.T @ b).double()
        if k == EXACT_BATCHES - 1 or (exact is None and (k + 1) * BATCH >= n_tokens):
            early = counter.result()
            reference = dense.numpy().astype(np.int64)
            kept = pair_counts(early, "jaccard", floor)[0][subset][:, subset].toarray()
            exact = bool(np.array_equal(early.full(subset), reference)
                         and np.array_equal(kept, kept_reference(reference, early.n_units, floor)))
    t = time.perf_counter()
    counts = counter.result()
    pairs, w = pair_counts(counts, "jaccard", floor)
    count_s += time.perf_counter() - t
    t = time.perf_counter()
    try:
        threshold, size = auto_threshold(w, 150, 200)
        graph = build_dictionary_graph(w, threshold, "leiden", 1.0, 0, size)
        n_communities, note = int(graph.community.max() + 1), ""
    except Exception as err:  # the target may be out of reach on chance co-firing: say so
        threshold, size, n_communities, note = float("nan"), 0, 0, str(err)
    graph_s = time.perf_counter() - t
    codes_mb = (counts.codes.data.nbytes + counts.codes.indices.nbytes + counts.codes.indptr.nbytes) / 2**20
    return {"d_sae": d, "tokens": n_tokens, "l0": float(counts.per_latent.sum() / counts.n_units), "floor": floor,
            "seconds_counts": count_s, "seconds_graph": graph_s,
            "seconds_total_excluding_generation": count_s + graph_s, "tokens_per_s": n_tokens / count_s,
            "n_pairs_kept": pairs.nnz, "codes_mb": codes_mb,
            "dense_int64_mb": d * d * 8 / 2**20, "edge_threshold": threshold, "largest_component": size,
            "n_communities": n_communities, "graph_note": note, "exact_2000_subset_first_8192_tokens": exact, "peak_rss_mb": peak_mb()}


def gpt2_section(n_tokens: int) -> dict:
    import torch

    from featsweep.engines.cooccurrence import CooccurrenceCounter, pair_counts
    from featsweep.subjects.loading import random_sae

    torch.manual_seed(0)
    # bias -2.8 on unit-norm rows and N(0, 1) inputs: P(active) = P(z > 2.8) ~ 0.0026, ~64 of 24,576 per token as in
    # real SAEs (the default -0.5 fires ~30% of latents: every pair co-fires and nothing sparse fits)
    sae = random_sae(768, 24576, bias_mean=-2.8)
    counter = CooccurrenceCounter.from_config(CooccurrenceConfig(), 24576)
    rows, ctx = 8, 128
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(max(1, n_tokens // (rows * ctx))):
            acts = sae.encode(torch.randn(rows, ctx, 768))
            counter.update(acts, torch.ones(rows, ctx, dtype=torch.bool))
    counts = counter.result()
    pairs, _ = pair_counts(counts, "jaccard", CooccurrenceConfig().floor)
    seconds = time.perf_counter() - start
    return {"d_sae": 24576, "tokens": counts.n_tokens, "l0": float(counts.per_latent.sum() / counts.n_units),
            "seconds_including_encode": seconds, "n_pairs_kept": pairs.nnz,
            "dense_int64_mb": 24576**2 * 8 / 2**20, "peak_rss_mb": peak_mb()}


SECTIONS = {"organism": organism_section, "synthetic": synthetic_section, "gpt2": gpt2_section}


def isolated(name: str, *args) -> dict:
    """Run a section in a fresh process (this script with --section): its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--section", name, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="synthetic tokens per large section")
    parser.add_argument("--organism-tokens", type=int, default=100_000)
    parser.add_argument("--sae-tokens", type=int, default=8192)
    parser.add_argument("--sizes", type=int, nargs="+", default=[24576, 65536])
    parser.add_argument("--section", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        name, *values = args.section
        print(json.dumps(SECTIONS[name](*map(int, values))))
        return
    out = {"organism": isolated("organism", args.organism_tokens)}
    print("organism:", out["organism"], flush=True)
    for d in args.sizes:
        out[f"synthetic_{d}"] = isolated("synthetic", d, args.tokens)
        print(f"synthetic_{d}:", out[f"synthetic_{d}"], flush=True)
    out["gpt2_random_sae"] = isolated("gpt2", args.sae_tokens)
    print("gpt2_random_sae:", out["gpt2_random_sae"], flush=True)
    for d in args.sizes:  # the target names: counts, normalisation, graph and communities; peak memory
        out[f"seconds_{d}"] = out[f"synthetic_{d}"]["seconds_total_excluding_generation"]
        out[f"peak_rss_mb_{d}"] = out[f"synthetic_{d}"]["peak_rss_mb"]
    out["exact"] = bool(out["organism"]["exact"] and all(out[f"synthetic_{d}"]["exact_2000_subset_first_8192_tokens"]
                                                         for d in args.sizes))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
