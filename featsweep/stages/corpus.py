"""The corpus stage: what every SAE latent does on ordinary text, in one streaming pass.

The corpus (``featsweep/stages/corpus_text.py``) is tokenized document by document into one stream, documents
separated by the BOS token (as SAE Lens does), and cut into rows of ``corpus.context`` tokens that each start
with BOS. Each batch of rows runs through the model only up to the SAE's hook (``stop_at_layer=layer``: the
residual stream before block ``layer`` is ``blocks.<layer>.hook_resid_pre``) and through the SAE's encoder.
BOS positions (row starts and document separators) are left out of every statistic, as in ``gen_max``, and so are
a row's first positions when the SAE was trained without them (SAE Lens's ``metadata.seqpos_slice``: SmolLM2's
shipped SAEs leave out the attention sink SmolLM2 makes of some first tokens after BOS, whose huge residual norm
would give its latents a ``gen_max`` ~100x too large).

Per latent, in memory that grows with ``d_sae`` and never with the number of tokens:

* **firing density**: the fraction of counted tokens where the activation is > 0 (exact), and the **max** (exact);
* **quantiles** of the activation where it fires (``QUANTILES``), from a fixed histogram per latent of
  ``HIST_BINS`` log-spaced bins over ``[10**HIST_LOG_LO, 10**HIST_LOG_HI]`` (plus an under- and an overflow
  bin), geometric interpolation inside a bin: an estimate within one bin (a factor ``10**HIST_BIN``, about 1.16)
  of the exact quantile; the histogram is also the dashboard's activation histogram;
* the **top-k activating contexts**: the ``corpus.top_k`` rows where the latent's largest activation is largest
  (one entry per row, as SAEDashboard's top sequences), each a window of ``LEFT`` tokens before and ``RIGHT``
  after the max token (the token at index ``LEFT``), merged batch by batch into a ``[d_sae, k]`` top-k;
* the **logit lens**: the top and bottom ``LENS_K`` tokens of ``W_dec[i] @ W_U`` (no final norm, as SAEDashboard).

The latents' max is ``gen_max``, the steering scale (``steering.scale=gen_max``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from featsweep.config import CorpusConfig
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult

log = logging.getLogger(__name__)

LEFT, RIGHT = 10, 3  # context window around the max token
QUANTILES = (0.5, 0.9, 0.99)
HIST_LOG_LO, HIST_LOG_HI, HIST_BINS = -3.0, 3.0, 96
HIST_BIN = (HIST_LOG_HI - HIST_LOG_LO) / HIST_BINS  # bin width in log10 units
LENS_K = 10
DEFAULT_CONTEXT = 128


@dataclass
class CorpusStats:
    """Everything the corpus stage keeps about each latent (numpy arrays, first axis = latent)."""

    description: str
    digest: str  # SHA-256 (16 hex) of the documents read
    n_documents: int
    n_rows: int
    context: int
    n_tokens: int  # counted positions (BOS excluded)
    fire_count: np.ndarray  # [d] int64
    max: np.ndarray  # [d] float32: gen_max
    hist: np.ndarray  # [d, HIST_BINS + 2] int64: underflow, bins, overflow
    top_values: np.ndarray  # [d, k] float32, descending; 0 = no context
    top_windows: np.ndarray  # [d, k, LEFT + 1 + RIGHT] int32 token ids, -1 = outside the row
    lens_top: np.ndarray  # [d, LENS_K] int64 token ids, largest first
    lens_top_values: np.ndarray
    lens_bottom: np.ndarray  # [d, LENS_K] smallest first
    lens_bottom_values: np.ndarray
    seconds: float = float("nan")  # the streaming pass (logit lens not included)
    extra: dict = field(default_factory=dict)
    cooccurrence: Any = None  # the co-occurrence Counts counted in the same pass (stage cooccurrence), else None

    @property
    def density(self) -> np.ndarray:
        return self.fire_count / max(self.n_tokens, 1)

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> np.ndarray:
        """``[d, len(qs)]`` estimated quantiles of each latent's non-zero activations (NaN: never fires)."""
        return histogram_quantiles(self.hist, self.max, qs)


def histogram_quantiles(hist: np.ndarray, maxima: np.ndarray, qs: Iterable[float]) -> np.ndarray:
    qs = list(qs)
    out = np.full((hist.shape[0], len(qs)), np.nan)
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1]
    lows = np.concatenate([[-np.inf], HIST_LOG_LO + HIST_BIN * np.arange(HIST_BINS), [HIST_LOG_HI]])
    for i in np.flatnonzero(total):
        for j, q in enumerate(qs):
            target = q * total[i]
            b = int(np.searchsorted(cum[i], target, side="left"))
            below = cum[i, b - 1] if b else 0
            frac = (target - below) / hist[i, b]
            if b == 0:  # underflow bin [0, 10**LO): linear
                value = frac * 10 ** HIST_LOG_LO
            elif b == HIST_BINS + 1:  # overflow bin [10**HI, max]: linear
                value = 10 ** HIST_LOG_HI + frac * (maxima[i] - 10 ** HIST_LOG_HI)
            else:
                value = 10 ** (lows[b] + frac * HIST_BIN)
            out[i, j] = min(value, float(maxima[i]))
    return out


def token_rows(documents: Iterable[str], tokenizer, bos: int, context: int, n_tokens: int) -> Iterator[list[int]]:
    """Rows of ``context`` tokens (BOS, then ``context - 1`` of the stream), at most ``ceil(n_tokens / context)``;
    the stream is the documents' tokens with a BOS after each. A partial last row is dropped."""
    width, produced, buffer = context - 1, 0, []
    for doc in documents:
        buffer.extend(tokenizer.encode(doc, add_special_tokens=False))
        buffer.append(bos)
        while len(buffer) >= width:
            yield [bos] + buffer[:width]
            buffer = buffer[width:]
            produced += context
            if produced >= n_tokens:
                return


def _batches(rows: Iterator[list[int]], size: int) -> Iterator[list[list[int]]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def hook_activations(subject, tokens: torch.Tensor) -> torch.Tensor:
    """SAE activations ``[b, T, d_sae]`` (float32): the model up to the hook, then the encoder."""
    resid = subject.model(tokens, stop_at_layer=subject.layer)
    return subject.sae.encode(resid).float()


def counted_positions(sae, tokens: torch.Tensor, bos: int) -> torch.Tensor:
    """``[b, T]`` bool: the positions every statistic counts: not BOS, and not before the first position of a row
    that the SAE was trained on (``sae.cfg.metadata.seqpos_slice``)."""
    counted = tokens != bos
    start = slice(*getattr(sae.cfg.metadata, "seqpos_slice", None) or (None,)).start or 0
    counted[:, :start] = False
    return counted


class _Accumulator:
    """The bounded per-latent state, on the model's device, updated batch by batch."""

    def __init__(self, d: int, k: int, device):
        width = LEFT + 1 + RIGHT
        self.top_values = torch.zeros(d, k, device=device)
        self.top_windows = torch.full((d, k, width), -1, dtype=torch.int32, device=device)
        self.hist = torch.zeros(d * (HIST_BINS + 2), dtype=torch.int64, device=device)
        self.max = torch.zeros(d, device=device)
        self.offsets = torch.arange(width, device=device)
        self.d, self.k = d, k

    def add(self, tokens: torch.Tensor, acts: torch.Tensor) -> None:
        b, d = tokens.shape[0], self.d
        flat = acts.reshape(-1, d)
        fired = flat > 0
        values, cols = flat[fired], fired.nonzero()[:, 1]
        bins = ((values.log10() - HIST_LOG_LO) / HIST_BIN).floor().clamp_(-1, HIST_BINS).long() + 1
        self.hist += torch.bincount(cols * (HIST_BINS + 2) + bins, minlength=self.hist.numel())
        row_max, row_arg = acts.max(dim=1)  # [b, d]: each row's largest activation and where
        self.max = torch.maximum(self.max, row_max.amax(dim=0))
        merged = torch.cat([self.top_values, row_max.T], dim=1)  # [d, k + b]
        self.top_values, order = merged.topk(self.k, dim=1)
        padded = F.pad(tokens, (LEFT, RIGHT), value=-1)  # window index j of position p = padded[p + j]
        index = (row_arg[..., None] + self.offsets).reshape(b, -1)
        windows = padded.gather(1, index).reshape(b, d, -1).transpose(0, 1).to(torch.int32)  # [d, b, W]
        candidates = torch.cat([self.top_windows, windows], dim=1)
        self.top_windows = candidates.gather(1, order[..., None].expand(-1, -1, candidates.shape[2]))


@torch.inference_mode()
def logit_lens(subject, chunk: int = 512) -> tuple[np.ndarray, ...]:
    """Top and bottom ``LENS_K`` tokens of ``W_dec[i] @ W_U`` for every latent: (top ids, values, bottom ids, values)."""
    w_dec, w_u = subject.sae.W_dec.float(), subject.model.W_U.float()
    parts = []
    for start in range(0, w_dec.shape[0], chunk):
        logits = w_dec[start : start + chunk] @ w_u
        top, bottom = logits.topk(LENS_K, dim=1), logits.topk(LENS_K, dim=1, largest=False)
        parts.append([t.cpu().numpy() for t in (top.indices, top.values, bottom.indices, bottom.values)])
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def separator_id(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise FeatsweepError("The model's tokenizer has neither a BOS nor an EOS token; the corpus stage needs one "
                         "to start rows and separate documents.")


def row_context(cfg: CorpusConfig, n_ctx: int) -> int:
    if cfg.context is None:
        return min(DEFAULT_CONTEXT, n_ctx)
    if cfg.context > n_ctx:
        raise FeatsweepError(f"corpus.context={cfg.context} is longer than the model's context ({n_ctx} tokens); "
                             f"use corpus.context<={n_ctx}, or corpus.context=null for min({DEFAULT_CONTEXT}, n_ctx).")
    return cfg.context


@torch.inference_mode()
def corpus_pass(subject, documents, cfg: CorpusConfig, progress: bool = True, counter=None) -> CorpusStats:
    """Stream the corpus through the model and SAE once; return the per-latent statistics. ``counter``: a
    ``CooccurrenceCounter`` fed every batch of the same pass (BOS positions masked), so co-occurrence over the
    dictionary costs no second pass."""
    tokenizer = subject.model.tokenizer
    bos, context = separator_id(tokenizer), row_context(cfg, int(subject.model.cfg.n_ctx))
    acc = _Accumulator(subject.d_sae, cfg.top_k, subject.device)
    n_rows = n_tokens = 0
    n_batches = -(-cfg.n_tokens // (context * cfg.batch_size))
    start = time.perf_counter()
    rows = token_rows(documents, tokenizer, bos, context, cfg.n_tokens)
    for batch in tqdm(_batches(rows, cfg.batch_size), total=n_batches, desc="corpus", unit="batch",
                      leave=False, disable=not progress):
        tokens = torch.tensor(batch, dtype=torch.long, device=subject.device)
        acts = hook_activations(subject, tokens)
        counted = counted_positions(subject.sae, tokens, bos)
        acts.masked_fill_(~counted[..., None], 0.0)
        acc.add(tokens, acts)
        if counter is not None:
            counter.update(acts, counted)
        n_rows += len(batch)
        n_tokens += int(counted.sum())
    if subject.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if n_rows == 0:
        raise FeatsweepError(f"The corpus ({documents.description}) is shorter than one row of corpus.context={context} "
                             "tokens; give more text, or a smaller corpus.context.")
    lens = logit_lens(subject)
    return CorpusStats(
        description=documents.description, digest=documents.digest, n_documents=documents.n_documents,
        n_rows=n_rows, context=context, n_tokens=n_tokens,
        fire_count=acc.hist.view(subject.d_sae, -1).sum(dim=1).cpu().numpy(), max=acc.max.cpu().numpy(),
        hist=acc.hist.view(subject.d_sae, -1).cpu().numpy(), top_values=acc.top_values.cpu().numpy(),
        top_windows=acc.top_windows.cpu().numpy(), lens_top=lens[0], lens_top_values=lens[1],
        lens_bottom=lens[2], lens_bottom_values=lens[3], seconds=seconds,
        cooccurrence=counter.result() if counter is not None else None)


def latent_table(stats: CorpusStats) -> pd.DataFrame:
    """One row per latent: firing count and density, max and quantiles on the corpus."""
    table = pd.DataFrame({"feature": np.arange(len(stats.max)), "fire_count": stats.fire_count,
                          "density": stats.density, "max": stats.max.astype(np.float64)})
    for q, column in zip(QUANTILES, stats.quantiles().T):
        table[f"q{round(q * 100)}"] = column
    return table


def corpus_stage(subject, documents, cfg: CorpusConfig, progress: bool = True, counter=None
                 ) -> tuple[CorpusStats, StageResult]:
    """Run the corpus pass and describe it: metrics ``corpus.*``, tags (digest, throughput), the latents table.
    ``counter``: see :func:`corpus_pass`."""
    stats = corpus_pass(subject, documents, cfg, progress, counter)
    n_tokens = stats.n_rows * stats.context
    tokens_per_second = n_tokens / stats.seconds if stats.seconds > 0 else float("nan")
    metrics = {
        "corpus.n_tokens": float(stats.n_tokens),
        "corpus.n_rows": float(stats.n_rows),
        "corpus.n_documents": float(stats.n_documents),
        "corpus.n_dead": float(int((stats.fire_count == 0).sum())),
        "corpus.mean_l0": float(stats.fire_count.sum() / max(stats.n_tokens, 1)),
    }
    # throughput is a tag, as featsweep.seconds.*: reruns compare metrics, and timings are not reproducible
    tags = {"corpus.digest": stats.digest, "corpus.description": stats.description,
            "corpus.context": str(stats.context), "corpus.tokens_per_second": f"{tokens_per_second:.0f}"}
    log.info("Corpus stage: %d tokens (%s) at %.0f tokens/s; %d latents never fire.", n_tokens,
             stats.description, tokens_per_second, int(metrics["corpus.n_dead"]))
    return stats, StageResult(metrics=metrics, tags=tags, tables={"tables/corpus_latents.parquet": latent_table(stats)})
