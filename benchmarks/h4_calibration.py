"""H4's calibration: how often its tests reject when the task's cluster labels have nothing to do with co-occurrence.

    python benchmarks/h4_calibration.py [REPEATS] [DRAWS] [FEATURES]     # defaults 200 199 40

Counts the organism's held-out corpus once (layer 3, unit=token, Jaccard), then per repeat draws FEATURES latents
that fire at random and deals them random cluster labels (4 clusters of equal size): labels unrelated to
co-occurrence by construction. Reports the fraction of repeats with p < 0.05 for the label permutation, the
density-matched latents and the verdict's rule (both), and the mean AMI against the dictionary communities. A
valid test with DRAWS draws rejects at most 0.05 of the time (up to sampling error over REPEATS). JSON last.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import numpy as np

from featsweep.config import CooccurrenceConfig, checked
from featsweep.hypotheses.h4 import h4_statistics
from featsweep.engines.cooccurrence import CooccurrenceCounter, sae_threshold
from featsweep.stages.corpus import corpus_stage
from featsweep.stages.corpus_text import corpus_documents
from featsweep.subjects.organism import ASSETS_DIR
from featsweep.stages.dictionary import cooccurrence_stage
from featsweep.subjects.loading import load_subject


def main() -> None:
    repeats, draws, n_features = (int(a) for a in (sys.argv[1:] + ["200", "199", "40"][len(sys.argv) - 1:])[:3])
    from hydra import compose, initialize_config_module

    from featsweep.config import register_configs

    register_configs()
    with initialize_config_module("featsweep.conf", version_base="1.3"):
        cfg = checked(compose(config_name="config"))
    start = time.perf_counter()
    subject = load_subject(cfg)
    counter = CooccurrenceCounter.from_config(cfg.cooccurrence, subject.d_sae, sae_threshold(subject.sae))
    stats, _ = corpus_stage(subject, corpus_documents(cfg.corpus, cfg.model, ASSETS_DIR), cfg.corpus, progress=False,
                            counter=counter)  # the run's own corpus pass
    counts = stats.cooccurrence
    graph, _ = cooccurrence_stage(counts, CooccurrenceConfig(n_permutations=0, n_matched=0), 0)
    fired = np.flatnonzero(counts.per_latent > 0)
    rng = np.random.default_rng(0)
    rows = []
    for r in range(repeats):
        latents = rng.choice(fired, n_features, replace=False)
        labels = rng.permutation(np.arange(n_features) % 4)
        network = SimpleNamespace(partition=dict(zip(latents.tolist(), labels.tolist())), kept_clusters=[0, 1, 2, 3])
        m = h4_statistics(network, counts, graph.community, "jaccard", draws, draws, 10, seed=r).metrics
        rows.append((m["h4.perm_p"], m["h4.matched_p"], m["h4.ami"]))
    p = np.array(rows)
    out = {"repeats": repeats, "draws": draws, "features": n_features,
           "reject_perm": float(np.mean(p[:, 0] < 0.05)), "reject_matched": float(np.mean(p[:, 1] < 0.05)),
           "reject_both": float(np.mean((p[:, 0] < 0.05) & (p[:, 1] < 0.05))), "mean_ami": float(p[:, 2].mean()),
           "seconds": time.perf_counter() - start}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
