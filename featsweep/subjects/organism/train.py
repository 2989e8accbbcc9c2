"""Rebuild the model organism end to end: corpus -> tokenizer -> model -> SAE -> card.

    python -m featsweep.subjects.organism.train [--out DIR] [--quick] [--seed N] [--sae-only] [--layers 0 1 ...]

The default ``--out`` is the shipped assets directory. One SAE is trained for
every layer of the residual stream (``blocks.<L>.hook_resid_pre``, saved in
``sae/layer_<L>/``), so ``sae.layer`` can sweep them offline. ``--sae-only``
keeps the model (and tokenizer) in ``--out`` and (re)trains only the SAEs of
``--layers`` (default: every layer), then re-measures the card. ``--quick``
trains a micro organism (tiny model and SAEs, few steps) in well under a minute, for tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .card import measure_card, measure_sae, task_metrics
from .corpus import SPORTS, build_corpus, write_organism_task
from .load import (
    ASSETS_DIR, BOS, CARD, CORPUS_META, DEFAULT_LAYER, GENERIC, HELDOUT, MODEL_CONFIG,
    MODEL_WEIGHTS, PAD, TOKENIZER, available_layers, build_model, hook_for, load_organism,
    load_organism_model, load_tokenizer, sae_dir,
)


@dataclass
class Settings:
    # corpus
    n_invented: int = 260
    fact_fraction: float = 0.5
    n_filler_docs: int = 1500
    # tokenizer
    vocab_size: int = 2048
    # model
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    steps: int = 1200
    batch_size: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    eval_every: int = 300
    # saes: one per residual-stream layer (blocks.<L>.hook_resid_pre, L = 0 .. n_layers - 1)
    default_layer: int = DEFAULT_LAYER  # the layer the default run studies (sae.layer in conf/sae/organism.yaml)
    d_sae: int = 1024
    k: int = 32
    sae_tokens: int = 1_200_000
    sae_batch_tokens: int = 1024
    sae_lr: float = 1e-3


QUICK = Settings(
    n_invented=100, n_filler_docs=200, vocab_size=1024, d_model=32, n_layers=3, n_heads=2,
    d_mlp=64, steps=120, batch_size=32, lr=3e-3, warmup=10, eval_every=1000,
    d_sae=256, k=16, sae_tokens=40_000, sae_batch_tokens=512, sae_lr=1e-3,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int, path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tk.save(str(path))
    tok = load_tokenizer(path)
    for s in SPORTS:
        ids = tok.encode(" " + s, add_special_tokens=False)
        assert len(ids) == 1, f"sport answer ' {s}' is not a single token: {ids}"
    return tok


# ---------------------------------------------------------------- model
def model_config(s: Settings, d_vocab: int, seed: int) -> dict:
    return dict(
        model_name="featsweep-organism",
        n_layers=s.n_layers, d_model=s.d_model, n_heads=s.n_heads, d_head=s.d_model // s.n_heads,
        d_mlp=s.d_mlp, d_vocab=d_vocab, n_ctx=s.n_ctx, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="standard",
        original_architecture="featsweep-organism", seed=seed,
        default_prepend_bos=True,
    )


def encode_docs(tok, docs: list[list[str]], n_ctx: int) -> list[list[int]]:
    bos = tok.bos_token_id
    rows = []
    for d in docs:
        ids = tok.encode("\n".join(d), add_special_tokens=False)
        rows.append([bos] + ids[: n_ctx - 1])
    return rows


def train_model(model, rows: list[list[int]], s: Settings, seed: int, pad_id: int, log) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < s.warmup:
            return (step + 1) / s.warmup
        t = (step - s.warmup) / max(1, s.steps - s.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    ema = None
    pbar = tqdm(range(s.steps), desc="Training organism LM", mininterval=10)
    for step in pbar:
        idx = torch.randint(len(rows), (s.batch_size,), generator=g).tolist()
        L = max(len(rows[i]) for i in idx)
        batch = torch.full((s.batch_size, L), pad_id, dtype=torch.long)
        for b, i in enumerate(idx):
            batch[b, : len(rows[i])] = torch.tensor(rows[i])
        logits = model(batch[:, :-1], return_type="logits")
        tgt = batch[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=pad_id
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0:
            pbar.set_postfix(loss=f"{ema:.3f}", refresh=False)
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            model.eval()
            m = task_metrics(model)
            model.train()
            log(f"step {step + 1}: loss {ema:.4f} task_acc {m['task_accuracy']:.2f} mean_prob {m['task_mean_prob']:.3f}")
    model.eval()
    return float(ema)


# ---------------------------------------------------------------- SAE
def train_sae(model, rows: list[list[int]], s: Settings, seed: int, out: Path, tok, layer: int):
    from datasets import Dataset
    from sae_lens import BatchTopKTrainingSAEConfig, LanguageModelSAETrainingRunner

    from featsweep.subjects.sae_training import cpu_runner_config

    pad, bos = tok.pad_token_id, tok.bos_token_id
    # one document per row, BOS first, padded to the context size: the LM's training distribution
    padded = [r + [pad] * (s.n_ctx - len(r)) for r in rows]
    ds = Dataset.from_dict({"input_ids": padded})
    cfg = cpu_runner_config(
        BatchTopKTrainingSAEConfig(d_in=s.d_model, d_sae=s.d_sae, k=s.k, dtype="float32", device="cpu",
                                   normalize_activations="none"),
        model_name="featsweep-organism", hook_name=hook_for(layer), dataset_path="featsweep-organism-corpus",
        context_size=s.n_ctx, exclude_special_tokens=[bos, pad], training_tokens=s.sae_tokens,
        batch_tokens=s.sae_batch_tokens, store_batch_size_prompts=32,
        n_batches_in_buffer=max(16, 2 * s.sae_batch_tokens // s.n_ctx),  # buffer >= one training batch
        lr=s.sae_lr, warm_up_steps=50, dead_feature_window=200, seed=seed, output_path=out / sae_dir(layer),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=ds, override_model=model)
        return runner.run()


# ---------------------------------------------------------------- main
def run(out: Path, quick: bool = False, seed: int = 0, command: str | None = None, threads: int | None = None,
        sae_only: bool = False, layers: list[int] | None = None) -> dict:
    t0 = time.time()
    s = QUICK if quick else Settings()
    # One intra-op thread by default: the matrices are small, and on a shared 2-core machine
    # two spinning threads were measured 3-5x slower than one.
    threads = threads or int(os.environ.get("FEATSWEEP_THREADS", 1))
    torch.set_num_threads(threads)
    seed_everything(seed)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: tqdm.write(f"[organism] {msg}")  # noqa: E731
    old_card = json.loads((out / CARD).read_text()) if (out / CARD).exists() else {}

    corpus = build_corpus(seed, n_invented=s.n_invented, fact_fraction=s.fact_fraction, n_filler_docs=s.n_filler_docs)
    if sae_only:  # keep the model, its tokenizer and its corpus files; the corpus is rebuilt only to feed the SAEs
        model = load_organism_model(out)
        tok = model.tokenizer
        model.eval()
        rows = encode_docs(tok, corpus.docs, s.n_ctx)
        final_loss, lm_time = old_card.get("final_train_loss"), old_card.get("lm_train_time_s")
        log(f"--sae-only: keeping the model in {out}")
    else:
        (out / GENERIC).write_text("\n".join(corpus.generic) + "\n")
        (out / HELDOUT).write_text("\n".join(corpus.heldout) + "\n")
        (out / CORPUS_META).write_text(json.dumps(corpus.meta, indent=1))
        if out.resolve() == ASSETS_DIR.resolve():  # the default task lists every athlete of the shipped corpus
            write_organism_task(corpus)
        log(f"corpus: {corpus.meta['n_athletes']} athletes, {corpus.meta['n_training_sentences']} sentences, "
            f"{len(corpus.fact_task_names)} task athletes with the Fact template")

        tok = train_tokenizer(corpus.training_sentences(), s.vocab_size, out / TOKENIZER)
        rows = encode_docs(tok, corpus.docs, s.n_ctx)
        log(f"tokenizer: vocab {len(tok)}; {sum(map(len, rows))} training tokens in {len(rows)} documents")

        cfg_kwargs = model_config(s, len(tok), seed)
        model = build_model(cfg_kwargs, tokenizer=tok)
        t1 = time.time()
        final_loss = train_model(model, rows, s, seed, tok.pad_token_id, log)
        lm_time = round(time.time() - t1, 1)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_WEIGHTS))
        (out / MODEL_CONFIG).write_text(json.dumps(cfg_kwargs, indent=1))

    n_layers = int(model.cfg.n_layers)
    layers = sorted(set(range(n_layers) if layers is None else layers))
    if any(not 0 <= layer < n_layers for layer in layers):
        raise SystemExit(f"--layers must lie in 0..{n_layers - 1}")
    sae_times = old_card.get("sae_train_time_s") or {} if sae_only else {}
    if not isinstance(sae_times, dict):  # a card from before one SAE per layer
        sae_times = {str(DEFAULT_LAYER): sae_times}
    for layer in layers:
        t2 = time.time()
        seed_everything(seed)  # each layer's SAE from the same seed, so any one can be retrained alone
        log(f"training the SAE at {hook_for(layer)}")
        train_sae(model, rows, s, seed, out, tok, layer)
        sae_times[str(layer)] = round(time.time() - t2, 1)

    # measure through the one loading path
    default = min(s.default_layer, n_layers - 1)
    (out / CARD).write_text(json.dumps({**old_card, "default_layer": default}, indent=1))  # read by load_organism
    card = measure_organism_card(out)
    card.update(
        final_train_loss=final_loss,
        seed=seed,
        quick=quick,
        command=command or f"python -m featsweep.subjects.organism.train --out {out} --seed {seed}" + (" --quick" if quick else ""),
        train_wall_time_s=round(time.time() - t0, 1) if not sae_only else old_card.get("train_wall_time_s"),
        lm_train_time_s=lm_time,
        sae_train_time_s=sae_times,
        torch_threads=threads,
        sae_architecture="batchtopk (saved as jumprelu)",
        settings=asdict(s),
        eval_note="SAE metrics on held-out activations (generic.txt + heldout.txt), BOS and padding excluded",
    )
    if sae_only:  # the model's command stays; each --sae-only pass is appended to the history
        history = list(old_card.get("sae_only_runs", []))
        history.append({"command": card.pop("command"), "layers": layers, "wall_time_s": round(time.time() - t0, 1)})
        card["command"] = old_card.get("command", "python -m featsweep.subjects.organism.train")
        card["sae_only_runs"] = history
    if out.resolve() == ASSETS_DIR.resolve() and not quick:  # the control needs the whole pipeline: a command of its own
        card["positive_control"] = old_card.get("positive_control")
        log("now re-measure the default run on the new weights: python -m featsweep.control --steering --write")
    (out / CARD).write_text(json.dumps(card, indent=1))
    log(json.dumps({k: v for k, v in card.items() if k != "settings"}, indent=1))
    return card


def measure_organism_card(out: Path) -> dict:
    """The card: task numbers of the model, and each layer's SAE numbers under ``saes``, all from the weights."""
    layers = available_layers(out)
    model, _, _ = load_organism(out, layer=layers[0])
    card = {k: v for k, v in measure_card(model, None, None, assets_dir=out).items()}
    card["default_layer"] = json.loads((out / CARD).read_text()).get("default_layer", DEFAULT_LAYER)
    card["saes"] = {}
    for layer in layers:
        _, sae, meta = load_organism(out, layer=layer)
        card["saes"][str(layer)] = measure_sae(model, sae, meta["hook_name"], assets_dir=out)
    return card


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m featsweep.subjects.organism.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS_DIR, help="output directory (default: shipped assets)")
    p.add_argument("--quick", action="store_true", help="micro organism for tests (< 1 min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $FEATSWEEP_THREADS or 1)")
    p.add_argument("--sae-only", action="store_true", help="keep the model in --out; (re)train only the SAEs")
    p.add_argument("--layers", type=int, nargs="*", default=None,
                   help="layers to train SAEs for (default: every layer; none with --sae-only: re-measure the card only)")
    args = p.parse_args(argv)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    argv_str = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    command = f"python -m featsweep.subjects.organism.train {argv_str}".strip()
    return run(args.out, quick=args.quick, seed=args.seed, command=command, threads=args.threads,
               sae_only=args.sae_only, layers=args.layers)


if __name__ == "__main__":
    main()
