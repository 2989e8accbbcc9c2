"""The SmolLM2 SAEs' text and card numbers, measured from the weights (never copied).

Text (no download on any machine):
* Python's own documentation, ``pydoc_data.topics.topics`` (shipped with every CPython install): general,
  technical English. Every ``HELDOUT_EVERY``-th topic (sorted by key) is held out.
* featsweep's seeded synthetic corpus (``featsweep.subjects.organism.corpus.build_corpus``): facts about athletes,
  teams, countries and positions, and generic filler sentences, the kind of text the athletes task is about.
  Its ``heldout`` and ``generic`` sentences are never trained on.

Training rows are ``CONTEXT`` tokens, BOS first, cut from one long token stream per source (no padding).
The held-out rows are cut the same way once and shipped as ``sae/heldout.txt`` (one row of text a line),
so a re-measurement reads the same text on any Python version (pydoc's topics differ between versions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch

from featsweep.subjects.organism.corpus import build_corpus, load_task_athletes
from featsweep import CONF_DIR

PACKAGE_DIR = Path(__file__).resolve().parent
SAE_ROOT = PACKAGE_DIR / "sae"
HELDOUT_FILE = SAE_ROOT / "heldout.txt"
CARD = "card.json"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"
CONTEXT = 128  # tokens per row, BOS included
# Positions 0 (BOS) and 1 are left out of training and of every number, and kept clean when CE splices the SAE in:
# from block ~7 on SmolLM2 turns some first tokens after BOS into attention sinks whose residual norm is up to 120x
# the median (16,905 against 138 at layer 12 on the training rows; "massive activations", Sun et al. 2024). A few
# such tokens would dominate the squared error of training and the pooled explained variance of the card.
SKIP_POSITIONS = 2
HELDOUT_EVERY = 8  # every 8th pydoc topic (sorted by key) is held out
N_HELDOUT_ROWS = 48  # held-out rows per source (48 x 127 ~ 6k tokens each; the text has ~60)
TASK_CONF = CONF_DIR / "task" / "athletes_fewshot.yaml"


def sae_path(layer: int) -> Path:
    return SAE_ROOT / f"layer_{layer}"


def hook_for(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


# ---------------------------------------------------------------- text
def pydoc_topics() -> tuple[list[str], list[str]]:
    """(training, held-out) topic texts of Python's own documentation."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    train = [topics[k].strip() for i, k in enumerate(keys) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    held = [topics[k].strip() for i, k in enumerate(keys) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, held


def corpus_texts(seed: int, n_filler_docs: int = 3000) -> tuple[list[str], list[str]]:
    """(training documents, held-out text) of featsweep's synthetic athletes corpus."""
    corpus = build_corpus(seed, n_filler_docs=n_filler_docs)
    return [" ".join(d) for d in corpus.docs], list(corpus.heldout) + list(corpus.generic)


def training_documents(seed: int = 0) -> Iterator[str]:
    """The SAE's training text as documents, for describing its latents (the offline corpus of a SmolLM2 run, as
    GPT-2's SAEs are described on the text they were trained on): Python's documentation topics and the synthetic
    athletes documents, merged so that both have handed out about as many characters (training rows are half
    each). Deterministic; the athletes documents state the facts the task asks about."""
    docs, _ = pydoc_topics()
    athletes, _ = corpus_texts(seed)
    streams = [iter(docs), iter(athletes)]
    chars = [0, 0]
    while streams:
        k = min(range(len(streams)), key=chars.__getitem__)  # the stream that has handed out less text
        text = next(streams[k], None)
        if text is None:
            del streams[k], chars[k]
            continue
        chars[k] += len(text)
        yield text


def token_rows(tokenizer, texts: list[str], sep: str, n_rows: int | None = None) -> list[list[int]]:
    """Rows of ``CONTEXT`` tokens (BOS, then ``CONTEXT - 1`` tokens of the stream ``sep.join(texts)``)."""
    ids = tokenizer.encode(sep.join(texts), add_special_tokens=False)
    width = CONTEXT - 1
    rows = [[tokenizer.bos_token_id] + ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]
    return rows if n_rows is None else rows[:n_rows]


def build_heldout_texts(tokenizer, seed: int) -> list[str]:
    """The held-out rows (both sources, ``N_HELDOUT_ROWS`` each) decoded back to text, BOS dropped."""
    _, doc_held = pydoc_topics()
    _, corpus_held = corpus_texts(seed)
    rows = token_rows(tokenizer, doc_held, "\n\n", N_HELDOUT_ROWS) + token_rows(tokenizer, corpus_held, " ", N_HELDOUT_ROWS)
    return [tokenizer.decode(r[1:]) for r in rows]


def read_heldout_texts(path: Path = HELDOUT_FILE) -> list[str]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_heldout_texts(texts: list[str], path: Path = HELDOUT_FILE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))  # one JSON string a line: rows hold newlines
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def task_prompts() -> list[str]:
    """The athletes task's 100 prompts with the 4-shot prefix of ``task=athletes_fewshot``."""
    from omegaconf import OmegaConf

    prefix = OmegaConf.load(TASK_CONF).prefix
    return [prefix + f"Fact: {name} plays the sport of" for name, _ in load_task_athletes()]


# ---------------------------------------------------------------- measuring
def tokens_of(model, texts: list[str]) -> list[torch.Tensor]:
    """Each text's tokens, BOS first, cut to ``CONTEXT`` (no padding: texts are run one length group at a time)."""
    return [model.to_tokens(t, prepend_bos=True, truncate=False)[0, :CONTEXT] for t in texts]


def _batches(toks: list[torch.Tensor], batch_size: int = 8):
    by_len: dict[int, list[torch.Tensor]] = {}
    for t in toks:
        by_len.setdefault(len(t), []).append(t)
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            yield torch.stack(group[i : i + batch_size])


def _layer(hook_name: str) -> int:
    if not (hook_name.startswith("blocks.") and hook_name.endswith(".hook_resid_pre")):
        raise ValueError(f"measuring needs a blocks.<L>.hook_resid_pre hook, not {hook_name}")
    return int(hook_name.split(".")[1])


@torch.no_grad()
def activations(model, hook_name: str, texts: list[str]) -> torch.Tensor:
    """[tokens, d_model] activations at ``hook_name`` (the residual entering block L), the first ``SKIP_POSITIONS``
    positions of each row (BOS and the possible sink after it) excluded."""
    layer = _layer(hook_name)
    out = []
    for batch in _batches(tokens_of(model, texts)):
        resid = model(batch.to(model.cfg.device), stop_at_layer=layer)  # blocks.L.hook_resid_pre
        out.append(resid[:, SKIP_POSITIONS:].reshape(-1, model.cfg.d_model).float().cpu())
    return torch.cat(out)


def explained_variance(acts: torch.Tensor, recon: torch.Tensor) -> float:
    """Pooled explained variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (over tokens and dimensions)."""
    acts, recon = acts.double(), recon.double()
    return float(1 - ((acts - recon) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())


@torch.no_grad()
def sae_numbers(sae, acts: torch.Tensor) -> dict[str, Any]:
    acts = acts.to(sae.W_dec.dtype)
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    active = feats != 0
    return {
        "explained_variance": explained_variance(acts, recon),
        "mean_l0": float(active.sum(-1).float().mean()),
        "dead_latents": int((~active.any(0)).sum()),
        "n_tokens": int(acts.shape[0]),
    }


@torch.no_grad()
def cross_entropy(model, sae, hook_name: str, texts: list[str]) -> dict[str, float]:
    """Mean next-token loss over ``texts``: clean, with the SAE's reconstruction spliced in at ``hook_name``,
    and with the residual there zero-ablated. The first ``SKIP_POSITIONS`` positions stay clean in all three (the
    SAE never saw them).
    The first L blocks run once; the three variants continue from the residual (``start_at_layer``)."""
    layer = _layer(hook_name)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    for batch in _batches(tokens_of(model, texts)):
        batch = batch.to(model.cfg.device)
        resid = model(batch, stop_at_layer=layer)
        spliced, zeroed = resid.clone(), resid.clone()
        spliced[:, SKIP_POSITIONS:] = sae(resid[:, SKIP_POSITIONS:].to(sae.W_dec.dtype)).to(resid.dtype)
        zeroed[:, SKIP_POSITIONS:] = 0
        m = batch.shape[0] * (batch.shape[1] - 1)
        for key, r in (("clean", resid), ("sae", spliced), ("zero", zeroed)):
            sums[key] += float(model(r, start_at_layer=layer, tokens=batch, return_type="loss")) * m
        n += m
    ce = {k: v / n for k, v in sums.items()}
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablated": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
    }


def measure_sae(model, sae, texts: list[str], hook_name: str | None = None, with_ce: bool = True,
                with_task: bool = True) -> dict[str, Any]:
    """The card numbers of ``sae`` on held-out ``texts`` (and, separately, its explained variance on the task prompts)."""
    hook_name = hook_name or sae.cfg.metadata.hook_name
    model.eval()
    sae.eval()
    out: dict[str, Any] = {"hook_name": hook_name, "d_sae": int(sae.cfg.d_sae)}
    out.update({f"heldout_{k}": v for k, v in sae_numbers(sae, activations(model, hook_name, texts)).items()})
    if with_ce:
        out.update(cross_entropy(model, sae, hook_name, texts))
    if with_task:
        task = sae_numbers(sae, activations(model, hook_name, task_prompts()))
        out.update(task_explained_variance=task["explained_variance"], task_mean_l0=task["mean_l0"],
                   task_n_tokens=task["n_tokens"])
    return out
