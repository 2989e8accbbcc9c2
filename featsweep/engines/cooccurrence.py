"""Corpus co-occurrence of every SAE latent, counted sparsely while activations stream past.

The method (Clarke, Bhatnagar and Bloom's ``sae_cooccurrence``; Li, Michaud, Tegmark et al.): binarise the
SAE's activations, ``B[u, i] = 1`` when latent ``i`` is active in unit ``u``, and count
``C = B.T @ B`` over the corpus. ``C_ii`` is how many units latent ``i`` fires in, ``C_ij`` how many units
``i`` and ``j`` share. A *unit* is

* ``cooccurrence.unit=token``: one token position (Clarke);
* ``cooccurrence.unit=window``: a non-overlapping window of ``cooccurrence.window`` positions of one corpus
  row (Li et al.'s 256-token chunks); a latent is active in the window when it fires anywhere in it.

A latent is *active* where its activation exceeds ``cooccurrence.activation_threshold``, added to a JumpReLU
SAE's own per-latent threshold when the SAE has one (Clarke's convention; the SAE's output is already 0 below
its own threshold, so the offset is what matters).

**Sparse, never dense.** The counter keeps each batch's codes as index pairs (moved off the accelerator: 4 bytes
per active latent per unit); at the end they form one ``scipy.sparse`` CSC matrix ``B`` [units, d_sae] of the whole
corpus, from which ``C_ii`` is a column count. The pairs ``C_ij`` are counted from ``B`` in blocks of latents
(:func:`pair_counts`): block ``I`` is ``B[:, I].T @ B``, one sparse product over the whole corpus (no running sum
to merge) whose work is the block's own pair incidences; of it the pairs ``i < j`` are kept when their measure
reaches ``cooccurrence.floor`` (0.01 by default). A block holds at most ``BLOCK_WORK`` pair incidences, which
bounds its memory whatever ``d_sae``. Never a dense ``d_sae x d_sae`` array: at GPT-2 shape a dense int64 matrix
would be 4.8 GB, at Li et al.'s 65,536 latents 34 GB.

**Which pairs are dropped and why they cannot matter.** Only pairs whose measure is below the floor. The
dictionary graph's edges need ``weight >= cooccurrence.edge_threshold``, and the threshold may not be set below
the floor (the config refuses it; ``auto`` searches only kept weights), so a dropped pair can never be an edge.
H4 and :func:`dense_weights` do not use the kept pairs at all: they count their small sets of latents exactly
from ``B``. ``cooc.n_pairs`` is the number of kept pairs. On synthetic codes with 64 independent heavy-tailed
latents per token almost every co-firing pair is chance with a Jaccard far below 0.01: at 200k tokens and
24,576 latents 105M pairs co-fire, which as int64 CSR alone took 6.2 GB of peak memory before this floor.

**Measures** (``cooccurrence.measure``): ``jaccard = C_ij / (C_ii + C_jj - C_ij)``;
``phi = (N C_ij - C_ii C_jj) / sqrt(C_ii (N - C_ii) C_jj (N - C_jj))`` with ``N`` the number of units. A pair
that never co-fired has Jaccard 0 and a negative phi, so with a positive floor none is kept;
:func:`dense_weights` gives the exact value of every pair of a small set.

The interface the corpus pass calls: ``counter = CooccurrenceCounter.from_config(cfg, d_sae, sae_threshold)``,
``counter.update(acts, mask)`` per batch, ``counter.result()`` at the end (the :class:`Counts`, cached with the
corpus stage; pairs are counted from it by :func:`weights`); the corpus stage
(``featsweep.stages.corpus.corpus_pass``) feeds it during its one streaming pass, so counting costs no second pass.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
from scipy import sparse

from featsweep.config import CooccurrenceConfig, CoocMeasure, CoocUnit
from featsweep.errors import FeatsweepError

BLOCK_WORK = 10_000_000  # pair incidences per block of latents: bounds a block product's memory (~50 bytes each)
MAX_INCIDENCES = 4e10  # ~10x the 1M-token benchmark's: beyond, the codes are dense and counting takes hours


@dataclass
class Counts:
    """The binary codes of one corpus, from which every co-occurrence count is exact."""

    codes: sparse.csc_matrix  # [n_units, d_sae] int32: B[u, i] = 1 when latent i is active in unit u
    n_tokens: int  # valid token positions seen (equal to n_units for unit=token)

    @property
    def d_sae(self) -> int:
        return self.codes.shape[1]

    @property
    def n_units(self) -> int:
        """N: tokens (unit=token) or windows (unit=window) counted."""
        return self.codes.shape[0]

    @property
    def per_latent(self) -> np.ndarray:
        """``C_ii``: the units each latent is active in."""
        return np.diff(self.codes.indptr).astype(np.int64)

    def full(self, latents: np.ndarray) -> np.ndarray:
        """The symmetric count matrix of a set of latents, dense ``[k, k]`` with ``C_ii`` on the diagonal."""
        columns = self.codes[:, np.asarray(latents, dtype=np.int64)]
        return (columns.T @ columns).toarray().astype(np.int64)


class CooccurrenceCounter:
    """Collects the binary codes of batches of SAE activations, sparsely (see the module docstring)."""

    def __init__(self, d_sae: int, unit: CoocUnit | str = "token", window: int = 16,
                 activation_threshold: float = 0.0, sae_threshold: Optional[torch.Tensor] = None):
        self.d_sae = int(d_sae)
        self.unit = CoocUnit(unit)
        self.window = int(window)
        threshold = torch.full((self.d_sae,), float(activation_threshold))
        if sae_threshold is not None:  # JumpReLU: the offset is added to each latent's own threshold
            threshold = threshold + sae_threshold.detach().float().cpu().reshape(-1)
        self.threshold = threshold
        self.n_tokens = 0
        self._latents: list[np.ndarray] = []  # per batch: the active latents, unit by unit
        self._per_unit: list[np.ndarray] = []  # per batch: how many latents each unit has

    @classmethod
    def from_config(cls, cfg: CooccurrenceConfig, d_sae: int, sae_threshold: Optional[torch.Tensor] = None
                    ) -> "CooccurrenceCounter":
        return cls(d_sae, cfg.unit, cfg.window, cfg.activation_threshold, sae_threshold)

    def codes(self, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The boolean codes ``[units, d_sae]`` of one batch: active tokens, or windows where a latent fired."""
        if acts.dim() != 3 or acts.shape[-1] != self.d_sae or tuple(mask.shape) != tuple(acts.shape[:2]):
            raise ValueError(f"acts must be [rows, ctx, {self.d_sae}] with mask [rows, ctx]; got "
                             f"{tuple(acts.shape)} and {tuple(mask.shape)}")
        mask = mask.to(acts.device, torch.bool)
        active = (acts > self.threshold.to(acts.device, acts.dtype)) & mask[..., None]
        if self.unit is CoocUnit.token:
            return active[mask]
        rows, ctx, d = active.shape
        n_windows = math.ceil(ctx / self.window)
        pad = n_windows * self.window - ctx
        if pad:
            active = torch.nn.functional.pad(active, (0, 0, 0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        windows = active.view(rows, n_windows, self.window, d).any(dim=2)
        return windows[mask.view(rows, n_windows, self.window).any(dim=2)]

    def update(self, acts: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one batch: ``acts`` [rows, ctx, d_sae] SAE activations, ``mask`` [rows, ctx] True at the
        positions to count (padding and BOS False)."""
        with torch.no_grad():
            codes = self.codes(acts, mask)
            unit, latent = torch.nonzero(codes, as_tuple=True)
        self.add_codes(unit.cpu().numpy(), latent.cpu().numpy(), int(codes.shape[0]), int(mask.sum()))

    def add_codes(self, unit: np.ndarray, latent: np.ndarray, n_units: int, n_tokens: Optional[int] = None) -> None:
        """Add ``n_units`` units given as the (unit, latent) index pairs of their active latents (no repeats):
        the sparse core of :meth:`update`, for callers that already hold sparse codes."""
        order = np.lexsort((latent, unit))
        self._latents.append(np.asarray(latent)[order].astype(np.int32))
        self._per_unit.append(np.bincount(np.asarray(unit, dtype=np.int64), minlength=int(n_units)))
        self.n_tokens += int(n_units if n_tokens is None else n_tokens)

    def result(self) -> Counts:
        per_unit = np.concatenate(self._per_unit) if self._per_unit else np.zeros(0, np.int64)
        indices = np.concatenate(self._latents) if self._latents else np.zeros(0, np.int32)
        indptr = np.concatenate([[0], np.cumsum(per_unit)])
        codes = sparse.csr_matrix((np.ones(len(indices), np.int32), indices, indptr), shape=(len(per_unit), self.d_sae))
        return Counts(codes=codes.tocsc(), n_tokens=self.n_tokens)


def count_cooccurrence(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: CooccurrenceConfig, d_sae: int,
                       sae_threshold: Optional[torch.Tensor] = None) -> Counts:
    """Run a counter over ``(acts, mask)`` batches."""
    counter = CooccurrenceCounter.from_config(cfg, d_sae, sae_threshold)
    for acts, mask in batches:
        counter.update(acts, mask)
    return counter.result()


def latent_blocks(counts: Counts, work: int) -> list[tuple[int, int]]:
    """Consecutive latent ranges ``[a, b)`` whose pair incidences (units of ``i`` times their active latents,
    summed over ``i``) stay within ``work``: a bound on each block product's size."""
    codes = counts.codes
    per_unit = np.bincount(codes.indices, minlength=codes.shape[0])
    incidences = np.cumsum(codes.T @ per_unit.astype(np.float64))  # [d_sae], cumulative
    blocks, a = [], 0
    while a < counts.d_sae:
        b = int(np.searchsorted(incidences, (incidences[a - 1] if a else 0.0) + work, side="right"))
        b = min(max(b, a + 1), counts.d_sae)
        blocks.append((a, b))
        a = b
    return blocks


def pair_counts(counts: Counts, measure: CoocMeasure | str, floor: float, progress: bool = False,
                work: int = BLOCK_WORK) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """The kept pairs: ``(C, W)``, strict upper triangular CSR matrices of the counts (int64) and the measure
    (float64) of every pair that co-fired with measure ``>= floor``; latents in blocks of ``work`` incidences,
    one block per CPU core at a time (scipy's sparse product releases the GIL)."""
    from tqdm.auto import tqdm

    by_latent = counts.codes.T.tocsr()  # [d_sae, n_units] (the transpose of a CSC matrix: no copy)
    by_unit = counts.codes.tocsr()  # [n_units, d_sae]
    half = counts.d_sae // 2
    upper_half = counts.codes[:, half:].tocsr()  # the latents j >= half: blocks past half skip a quarter of the work
    per_latent = counts.per_latent

    def kept_in(block: tuple[int, int]) -> tuple[np.ndarray, ...]:
        a, b = block
        first, right = (half, upper_half) if a >= half else (0, by_unit)
        # the product's work is the block's own incidences: each row i walks only its units' latents (j >= first)
        product = (by_latent[a:b] @ right).tocoo()  # [b - a, d_sae - first]: C[a + r, first + col]
        i, j = product.row.astype(np.int64) + a, product.col.astype(np.int64) + first
        upper = j > i  # each pair once, in the block of its smaller latent
        i, j, c = i[upper], j[upper], product.data[upper].astype(np.int64)
        w = measure_values(c, per_latent[i], per_latent[j], counts.n_units, measure)
        keep = w >= floor
        return i[keep], j[keep], c[keep], w[keep]

    per_unit = np.diff(by_unit.indptr).astype(np.float64)
    incidences = float(per_unit @ per_unit)  # sum over units of (active latents)^2: the work of all blocks
    if incidences > MAX_INCIDENCES:
        l0 = counts.per_latent.sum() / max(counts.n_units, 1)
        raise FeatsweepError(
            f"The codes are too dense to count pairs: {l0:.0f} of {counts.d_sae} latents are active per unit on average "
            f"({incidences:.2g} pair incidences). Raise cooccurrence.activation_threshold, use fewer corpus.n_tokens, "
            "or leave the cooccurrence stage out of stages=[...].")
    blocks = latent_blocks(counts, work)
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        parts = list(tqdm(pool.map(kept_in, blocks), total=len(blocks), desc="co-occurrence pairs", unit="block",
                          disable=not progress))
    i, j, c, w = (np.concatenate(x) for x in zip(*parts)) if parts else (np.zeros(0, np.int64),) * 3 + (np.zeros(0),)
    shape = (counts.d_sae, counts.d_sae)
    return sparse.csr_matrix((c, (i, j)), shape=shape), sparse.csr_matrix((w, (i, j)), shape=shape)


# ---- measures ---------------------------------------------------------------------------------------------


def measure_values(c: np.ndarray, ci: np.ndarray, cj: np.ndarray, n: int, measure: CoocMeasure | str) -> np.ndarray:
    """Jaccard or phi of pairs from their counts (0 where a latent never or always fires: undefined)."""
    c, ci, cj = (np.asarray(x, dtype=np.float64) for x in (c, ci, cj))
    if CoocMeasure(measure) is CoocMeasure.jaccard:
        union = ci + cj - c
        return np.divide(c, union, out=np.zeros_like(c), where=union > 0)
    denom = np.sqrt(ci * (n - ci) * cj * (n - cj))
    return np.divide(n * c - ci * cj, denom, out=np.zeros_like(c), where=denom > 0)


def weights(counts: Counts, measure: CoocMeasure | str, floor: float) -> sparse.csr_matrix:
    """The measure on every kept pair (co-fired, measure ``>= floor``): strict upper triangular CSR, float64."""
    return pair_counts(counts, measure, floor)[1]


def dense_weights(counts: Counts, latents: np.ndarray, measure: CoocMeasure | str) -> np.ndarray:
    """The measure for every pair of a small set of latents (co-fired or not), symmetric, diagonal NaN."""
    full = counts.full(latents)
    diag = np.diag(full).astype(np.float64)
    values = measure_values(full, diag[:, None], diag[None, :], counts.n_units, measure)
    np.fill_diagonal(values, np.nan)
    return values


def cooccurrence_counting(cfg: CooccurrenceConfig) -> dict:
    """The settings the counts depend on (the corpus stage's cache key joins them)."""
    return {"unit": CoocUnit(cfg.unit).value, "activation_threshold": cfg.activation_threshold,
            "window": cfg.window if CoocUnit(cfg.unit) is CoocUnit.window else None}


def check_window(cfg: CooccurrenceConfig, context: int) -> None:
    """Windows are cut within the corpus's rows: one longer than a row is refused in one line."""
    if CoocUnit(cfg.unit) is CoocUnit.window and cfg.window > context:
        raise FeatsweepError(f"cooccurrence.window={cfg.window} is longer than the corpus's rows ({context} tokens): "
                             f"use cooccurrence.window<={context}, or a longer corpus.context.")


def sae_threshold(sae) -> Optional[torch.Tensor]:
    """A JumpReLU SAE's per-latent threshold (None for other architectures)."""
    threshold = getattr(sae, "threshold", None)
    return threshold.detach() if isinstance(threshold, torch.Tensor) else None


def logit_lens_labels(sae, model, latents: np.ndarray, k: int = 3) -> list[str]:
    """Each latent's top ``k`` tokens of ``W_dec[i] @ W_U`` (no final norm, as Neuronpedia's dashboards)."""
    latents = np.asarray(latents, dtype=np.int64)
    if not len(latents):
        return []
    with torch.no_grad():
        logits = sae.W_dec[torch.as_tensor(latents, device=sae.W_dec.device)].float() @ model.W_U.float().to(sae.W_dec.device)
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu().numpy()
    return ["|".join(_printable(model.tokenizer.decode([int(t)])) for t in row) for row in top]


def _printable(text: str) -> str:
    """Control characters as escapes (plots and GraphML cannot show them)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
