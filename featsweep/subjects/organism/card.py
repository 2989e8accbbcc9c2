"""Measuring the organism's card numbers from weights (never copied)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import torch

from .corpus import TASK_PROMPT, load_task_athletes
from .load import ASSETS_DIR, GENERIC, HELDOUT


def task_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) for the 100 task athletes."""
    return [(TASK_PROMPT.format(name=n), a) for n, a in load_task_athletes()]


@torch.no_grad()
def task_metrics(model, prompts: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Accuracy (correct answer token is the argmax) and mean correct-token probability."""
    prompts = prompts or task_prompts()
    by_len: dict[int, list[tuple[torch.Tensor, int]]] = defaultdict(list)
    for p, a in prompts:
        toks = model.to_tokens(p, prepend_bos=True)[0]
        ans = model.to_tokens(" " + a, prepend_bos=False)[0]
        if len(ans) != 1:
            raise ValueError(f"answer {a!r} is not a single token")
        by_len[len(toks)].append((toks, int(ans[0])))
    correct, probs = [], []
    for items in by_len.values():
        toks = torch.stack([t for t, _ in items]).to(model.cfg.device)
        ans = torch.tensor([a for _, a in items], device=toks.device)
        logits = model(toks, return_type="logits")[:, -1].float()
        p = logits.softmax(-1)
        correct += (logits.argmax(-1) == ans).tolist()
        probs += p.gather(1, ans[:, None])[:, 0].tolist()
    return {
        "task_accuracy": sum(correct) / len(correct),
        "task_mean_prob": sum(probs) / len(probs),
        "n_task_prompts": len(correct),
    }


def _hook_layer(hook_name: str) -> int:
    return int(hook_name.split(".")[1])


@torch.no_grad()
def hook_activations(model, hook_name: str, texts: Iterable[str], batch_size: int = 64) -> torch.Tensor:
    """Activations at ``hook_name`` for each text (BOS prepended), BOS and padding removed."""
    texts = list(texts)
    out = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        toks = model.to_tokens(chunk, prepend_bos=True, padding_side="right", truncate=True)
        _, cache = model.run_with_cache(
            toks, names_filter=hook_name, stop_at_layer=_hook_layer(hook_name) + 1
        )
        acts = cache[hook_name]
        keep = toks != model.tokenizer.pad_token_id
        keep[:, 0] = False  # BOS
        out.append(acts[keep].float())
    return torch.cat(out)


@torch.no_grad()
def sae_metrics(sae, acts: torch.Tensor) -> dict[str, Any]:
    """Explained variance (pooled), mean L0 and dead fraction of ``sae`` on ``acts``."""
    acts = acts.to(sae.W_dec.dtype).to(sae.W_dec.device)
    feats = sae.encode(acts)
    recon = sae.decode(feats)
    resid = ((acts - recon) ** 2).sum()
    total = ((acts - acts.mean(0)) ** 2).sum()
    active = feats != 0
    return {
        "sae_explained_variance": float(1 - resid / total),
        "sae_mean_l0": float(active.sum(-1).float().mean()),
        "sae_dead_fraction": float((~active.any(0)).float().mean()),
        "sae_eval_tokens": int(acts.shape[0]),
    }


@torch.no_grad()
def task_feature_coverage(model, sae, hook_name: str, prompts=None, min_fraction: float = 0.9) -> dict[str, Any]:
    """How many SAE features are non-zero (on any token after ``Fact:``) on >= min_fraction of task prompts."""
    prompts = prompts or task_prompts()
    hits = torch.zeros(sae.cfg.d_sae)
    for p, _ in prompts:
        toks = model.to_tokens(p, prepend_bos=True)
        _, cache = model.run_with_cache(toks, names_filter=hook_name, stop_at_layer=_hook_layer(hook_name) + 1)
        f = sae.encode(cache[hook_name][0, 3:].to(sae.W_dec.dtype))  # skip BOS, "Fact", ":"
        hits += (f != 0).any(0).float().cpu()
    frac = hits / len(prompts)
    return {
        "n_features_active_ge90pct_task_prompts": int((frac >= min_fraction).sum()),
        "n_features_active_all_task_prompts": int((frac >= 1.0).sum()),
    }


def read_lines(path: Path) -> list[str]:
    return [l for l in path.read_text().splitlines() if l.strip()]


def measure_sae(
    model,
    sae,
    hook_name: str,
    assets_dir: str | Path | None = None,
    generic: list[str] | None = None,
    heldout: list[str] | None = None,
) -> dict[str, Any]:
    """One SAE's card numbers: explained variance, mean L0 and dead-latent fraction on held-out
    activations (``generic.txt`` plus ``heldout.txt``, corpus sentences never trained on; BOS and
    padding excluded), and its feature coverage of the task prompts."""
    assets = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    if generic is None:
        generic = read_lines(assets / GENERIC)
    if heldout is None:
        heldout = read_lines(assets / HELDOUT)
    model.eval()
    sae.eval()
    acts = hook_activations(model, hook_name, list(generic) + list(heldout))
    out = sae_metrics(sae, acts)
    out.update(task_feature_coverage(model, sae, hook_name))
    out.update(hook_name=hook_name, d_sae=int(sae.cfg.d_sae))
    return out


def measure_card(
    model,
    sae=None,
    hook_name: str | None = None,
    assets_dir: str | Path | None = None,
    generic: list[str] | None = None,
    heldout: list[str] | None = None,
) -> dict[str, Any]:
    """(Re)compute the card numbers from the weights.

    Task accuracy / mean probability on the 100 task prompts and the model's shape; with
    ``sae`` and ``hook_name`` also that SAE's numbers (``measure_sae``).
    """
    model.eval()
    card = task_metrics(model)
    card.update(
        d_model=int(model.cfg.d_model),
        n_layers=int(model.cfg.n_layers),
        d_vocab=int(model.cfg.d_vocab),
    )
    if sae is not None:
        card.update(measure_sae(model, sae, hook_name, assets_dir=assets_dir, generic=generic, heldout=heldout))
    return card
