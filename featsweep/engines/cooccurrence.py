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

**Sparse, never dense.** Each batch's codes are a ``scipy.sparse`` CSR matrix built from the nonzero positions
only (moved off the accelerator as index pairs), its product ``B.T @ B`` keeps only the pairs that fired
together in the batch, and the running total keeps the strict upper triangle as int64 CSR plus the diagonal
as a dense ``[d_sae]`` vector. Memory is ``12 bytes x`` the number of distinct co-firing pairs (reported as
``cooc.n_pairs``), never ``d_sae^2``: at GPT-2 shape a dense int64 matrix would be 4.8 GB, and Li et al.'s
65,536 latents 34 GB. The only dense arrays are the ``[rows, ctx, d_sae]`` activations the caller hands in
and their boolean mask. Pairs are never dropped: the counts are exact (``benchmarks/cooccurrence.py``
measures the pair count, hence the memory, on synthetic heavy-tailed codes at GPT-2 and 65k shape).

**Measures** (``cooccurrence.measure``) on the stored pairs: ``jaccard = C_ij / (C_ii + C_jj - C_ij)``;
``phi = (N C_ij - C_ii C_jj) / sqrt(C_ii (N - C_ii) C_jj (N - C_jj))`` with ``N`` the number of units. A pair
that never co-fired has Jaccard 0 and a negative phi, so with a positive edge threshold no edge is lost by
storing only the pairs that co-fired; :func:`dense_weights` gives the exact value of every pair of a small set.

The interface the corpus pass calls: ``counter = CooccurrenceCounter.from_config(cfg, d_sae, sae_threshold)``,
``counter.update(acts, mask)`` per batch, ``counter.result()`` at the end; the corpus stage
(``featsweep.stages.corpus.corpus_pass``) feeds it during its one streaming pass, so counting costs no second pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch
from scipy import sparse

from featsweep.config import CooccurrenceConfig, CoocMeasure, CoocUnit
from featsweep.errors import FeatsweepError

_MERGE_EVERY = 16  # batch products summed at once: one pass over the running total per 16 batches


@dataclass
class Counts:
    """Exact co-occurrence counts of one corpus."""

    pairs: sparse.csr_matrix  # [d_sae, d_sae] int64, strict upper triangle: C_ij (i < j) of pairs that co-fired
    per_latent: np.ndarray  # [d_sae] int64: C_ii, the units each latent is active in
    n_units: int  # N: tokens (unit=token) or windows (unit=window) counted
    n_tokens: int  # valid token positions seen (equal to n_units for unit=token)
    _symmetric: Optional[sparse.csr_matrix] = field(default=None, repr=False, compare=False)

    @property
    def d_sae(self) -> int:
        return len(self.per_latent)

    def symmetric(self) -> sparse.csr_matrix:
        """``C`` with both triangles (diagonal empty), built once."""
        if self._symmetric is None:
            self._symmetric = (self.pairs + self.pairs.T).tocsr()
        return self._symmetric

    def full(self, latents: np.ndarray) -> np.ndarray:
        """The symmetric count matrix of a set of latents, dense ``[k, k]`` with ``C_ii`` on the diagonal."""
        latents = np.asarray(latents, dtype=np.int64)
        full = self.symmetric()[latents][:, latents].toarray()
        full[np.diag_indices_from(full)] = self.per_latent[latents]
        return full


class CooccurrenceCounter:
    """Accumulates ``B.T @ B`` over batches of SAE activations, sparsely (see the module docstring)."""

    def __init__(self, d_sae: int, unit: CoocUnit | str = "token", window: int = 16,
                 activation_threshold: float = 0.0, sae_threshold: Optional[torch.Tensor] = None):
        self.d_sae = int(d_sae)
        self.unit = CoocUnit(unit)
        self.window = int(window)
        threshold = torch.full((self.d_sae,), float(activation_threshold))
        if sae_threshold is not None:  # JumpReLU: the offset is added to each latent's own threshold
            threshold = threshold + sae_threshold.detach().float().cpu().reshape(-1)
        self.threshold = threshold
        self.per_latent = np.zeros(self.d_sae, np.int64)
        self.n_units = 0
        self.n_tokens = 0
        self._total = sparse.csr_matrix((self.d_sae, self.d_sae), dtype=np.int64)
        self._pending: list[sparse.csr_matrix] = []

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
        self.n_units += int(n_units)
        self.n_tokens += int(n_units if n_tokens is None else n_tokens)
        if not len(latent):
            return
        # B.T as CSR (latents x units): its product with its transpose is C for this batch
        bt = sparse.csr_matrix((np.ones(len(unit), np.int32), (latent, unit)), shape=(self.d_sae, int(n_units)))
        self.per_latent += np.bincount(latent, minlength=self.d_sae)
        self._pending.append(sparse.triu(bt @ bt.T, k=1, format="csr"))
        if len(self._pending) >= _MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        """Sum the pending batch products among themselves first (small), then into the total once."""
        if not self._pending:
            return
        batch = self._pending[0].astype(np.int64)
        for part in self._pending[1:]:
            batch = batch + part
        self._total = self._total + batch
        self._pending = []

    def result(self) -> Counts:
        self._merge()
        pairs = self._total.tocsr()
        pairs.sum_duplicates()
        pairs.eliminate_zeros()
        return Counts(pairs=pairs, per_latent=self.per_latent.copy(), n_units=self.n_units, n_tokens=self.n_tokens)


def count_cooccurrence(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: CooccurrenceConfig, d_sae: int,
                       sae_threshold: Optional[torch.Tensor] = None) -> Counts:
    """Run a counter over ``(acts, mask)`` batches."""
    counter = CooccurrenceCounter.from_config(cfg, d_sae, sae_threshold)
    for acts, mask in batches:
        counter.update(acts, mask)
    return counter.result()


# ---- measures ---------------------------------------------------------------------------------------------


def measure_values(c: np.ndarray, ci: np.ndarray, cj: np.ndarray, n: int, measure: CoocMeasure | str) -> np.ndarray:
    """Jaccard or phi of pairs from their counts (0 where a latent never or always fires: undefined)."""
    c, ci, cj = (np.asarray(x, dtype=np.float64) for x in (c, ci, cj))
    if CoocMeasure(measure) is CoocMeasure.jaccard:
        union = ci + cj - c
        return np.divide(c, union, out=np.zeros_like(c), where=union > 0)
    denom = np.sqrt(ci * (n - ci) * cj * (n - cj))
    return np.divide(n * c - ci * cj, denom, out=np.zeros_like(c), where=denom > 0)


def weights(counts: Counts, measure: CoocMeasure | str) -> sparse.csr_matrix:
    """The measure on every stored (co-fired) pair: a strict upper triangular CSR matrix of float64."""
    coo = counts.pairs.tocoo()
    values = measure_values(coo.data, counts.per_latent[coo.row], counts.per_latent[coo.col], counts.n_units, measure)
    return sparse.csr_matrix((values, (coo.row, coo.col)), shape=coo.shape)


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
