"""Corpus stage benchmark: the stage's throughput against a bare forward to the SAE's hook plus the SAE's encode.

    python benchmarks/corpus.py                    # SmolLM2-135M (`make smollm2`) with its shipped SAE, then the
                                                   # GPT-2-small shape with random weights (24,576 latents)
    python benchmarks/corpus.py --tokens 4096 --gpt2-tokens 2048   # shorter

Both sides read the same rows of the offline corpus (Python's documentation, ``corpus=offline``) in the same
process, alternately, ``--repeats`` times each; the best time of each side counts (the machine may be shared).
The bare side gets the rows already tokenized and only runs ``model(tokens, stop_at_layer=layer)`` and
``sae.encode``; the stage (``corpus_pass``) also tokenizes and keeps every statistic (density, max, histogram,
top-k contexts). The logit lens, computed once per SAE after the pass, is timed apart (``logit_lens_seconds``).
A random SAE fires densely (about half its latents on every token), so the GPT-2 shape is a worst case with no
target. ``peak_rss_mb`` is the process's peak resident memory after the SmolLM2 part (model included).

Last line, JSON: {"tokens_per_second", "bare_tokens_per_second", "ratio", "peak_rss_mb", "logit_lens_seconds",
"gpt2_shape_ratio", "gpt2_shape_tokens_per_second"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featsweep.control import compose_default  # noqa: E402
from featsweep.stages.corpus import (_batches, corpus_pass, hook_activations, logit_lens, row_context,  # noqa: E402
                                     separator_id, token_rows)
from featsweep.stages.corpus_text import corpus_documents  # noqa: E402
from featsweep.subjects.loading import load_subject  # noqa: E402


@torch.inference_mode()
def bare_seconds(subject, rows: list[list[int]], batch_size: int) -> float:
    start = time.perf_counter()
    for batch in _batches(iter(rows), batch_size):
        hook_activations(subject, torch.tensor(batch, device=subject.device))
    if subject.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(overrides: list[str], n_tokens: int, repeats: int) -> dict:
    cfg = compose_default([*overrides, f"corpus.n_tokens={n_tokens}"])
    subject = load_subject(cfg)
    tokenizer = subject.model.tokenizer
    context = row_context(cfg.corpus, int(subject.model.cfg.n_ctx))
    rows = list(token_rows(corpus_documents(cfg.corpus, cfg.model, sae_cfg=cfg.sae), tokenizer, separator_id(tokenizer), context,
                           n_tokens))
    total = len(rows) * context
    bare_seconds(subject, rows[: cfg.corpus.batch_size], cfg.corpus.batch_size)  # warm-up
    bare, stage = [], []
    for _ in range(repeats):
        bare.append(bare_seconds(subject, rows, cfg.corpus.batch_size))
        stats = corpus_pass(subject, corpus_documents(cfg.corpus, cfg.model, sae_cfg=cfg.sae), cfg.corpus, progress=False)
        assert stats.n_rows == len(rows)
        stage.append(stats.seconds)
    start = time.perf_counter()
    logit_lens(subject)
    lens = time.perf_counter() - start
    out = {"tokens": total, "d_sae": subject.d_sae, "bare_tokens_per_second": total / min(bare),
           "tokens_per_second": total / min(stage), "logit_lens_seconds": lens,
           "mean_l0": float(stats.fire_count.sum() / stats.n_tokens)}
    out["ratio"] = out["tokens_per_second"] / out["bare_tokens_per_second"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="SmolLM2 tokens per pass")
    parser.add_argument("--gpt2-tokens", type=int, default=4096, help="GPT-2-shape tokens per pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    smol = measure(["experiment=smollm2"], args.tokens, args.repeats)
    smol["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"SmolLM2-135M + shipped SAE (d_sae {smol['d_sae']}, L0 {smol['mean_l0']:.1f}), {smol['tokens']} tokens: "
          f"stage {smol['tokens_per_second']:.0f} tok/s, bare {smol['bare_tokens_per_second']:.0f} tok/s, "
          f"ratio {smol['ratio']:.3f}; logit lens {smol['logit_lens_seconds']:.1f} s; peak RSS {smol['peak_rss_mb']:.0f} MB")
    gpt2 = measure(["experiment=seed", "model.random_init=true", "sae.random_init=true"], args.gpt2_tokens,
                   args.repeats)
    print(f"GPT-2-small shape, random weights (d_sae {gpt2['d_sae']}, L0 {gpt2['mean_l0']:.0f}), {gpt2['tokens']} "
          f"tokens: stage {gpt2['tokens_per_second']:.0f} tok/s, bare {gpt2['bare_tokens_per_second']:.0f} tok/s, "
          f"ratio {gpt2['ratio']:.3f}")
    print(json.dumps({"tokens_per_second": round(smol["tokens_per_second"], 1),
                      "bare_tokens_per_second": round(smol["bare_tokens_per_second"], 1),
                      "ratio": round(smol["ratio"], 3), "peak_rss_mb": round(smol["peak_rss_mb"], 1),
                      "logit_lens_seconds": round(smol["logit_lens_seconds"], 2),
                      "gpt2_shape_ratio": round(gpt2["ratio"], 3),
                      "gpt2_shape_tokens_per_second": round(gpt2["tokens_per_second"], 1)}))


if __name__ == "__main__":
    main()
