"""SAE feature attribution: ``a_i * (d_i . grad_x m)`` per prompt, position and active feature.

The SAE is spliced in at ``subject.hook_name`` with its error term kept::

    x_hat = decode(f) + (x - decode(encode(x))).detach(),   f = encode(x) (a leaf that requires grad)

so ``x_hat == x`` numerically and the model's logits are unchanged, while the gradient of the
metric ``m`` (the task's logit difference) reaches ``f`` through the decoder: ``grad_f m = W_dec grad_x m``.
The attribution is then ``f * grad_f m`` = ``a_i * (d_i . grad_x m)``: one forward and one backward
pass per batch. Only entries with ``a_i > 0`` are kept (long, sparse table); the dense ``[b, T, d_sae]``
code exists for one batch at a time only, so memory stays bounded at GPT-2 small's 24,576 features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featsweep.config import Aggregation, AttributionConfig, Selection
from featsweep.errors import FeatsweepError
from featsweep.results import StageResult

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["prompt", "position", "feature", "value", "activation"]


@dataclass
class Attributions:
    """Sparse attributions of every active (prompt, position, feature)."""

    table: pd.DataFrame  # prompt int32, position int32, feature int32, value float32, activation float32
    n_prompts: int
    d_sae: int
    prefix_len: int
    lengths: np.ndarray  # tokens per prompt
    resid_grad: list[np.ndarray] = field(default_factory=list)  # per prompt [T_p, d_model]: grad_x m at the hook


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt": np.zeros(0, np.int32), "position": np.zeros(0, np.int32), "feature": np.zeros(0, np.int32),
        "value": np.zeros(0, np.float32), "activation": np.zeros(0, np.float32),
    })


def splice_hook(sae, store: dict):
    """A TransformerLens hook that replaces x by ``decode(f) + error`` and records the leaf ``f``.

    ``store["f"]`` is the SAE code (leaf, requires grad); ``store["x_hat"]`` the spliced activation, whose
    ``.grad`` after backward is ``grad_x m`` (``x_hat`` equals ``x``, so it is the same gradient).
    """

    def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
        with torch.no_grad():
            f0 = sae.encode(x)
            error = x - sae.decode(f0).to(x.dtype)
        f = f0.detach().requires_grad_(True)
        x_hat = sae.decode(f).to(x.dtype) + error
        if x_hat.requires_grad:  # not under no_grad (e.g. spliced_logits)
            x_hat.retain_grad()
        store["f"] = f
        store["x_hat"] = x_hat
        return x_hat

    return hook


def spliced_logits(subject, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the model with the SAE spliced in (error term kept); for checks and tests."""
    store: dict = {}
    with torch.no_grad():
        return subject.model.run_with_hooks(tokens.to(subject.device),
                                            fwd_hooks=[(subject.hook_name, splice_hook(subject.sae, store))])


def compute_attributions(subject, task, batch_size: int, progress: bool = True) -> Attributions:
    """Attributions ``a_i * (d_i . grad_x m)`` of every active feature at every position of every prompt.

    One forward and one backward pass of ``task.logit_diff(...).sum()`` per batch (prompts of a batch share
    their length, so the last position is the prediction). Rows with ``a_i > 0`` are kept.
    """
    if batch_size < 1:
        raise FeatsweepError(f"attribution.batch_size={batch_size}: use a positive batch size.")
    model, sae = subject.model, subject.sae
    device = subject.device
    parts: list[pd.DataFrame] = []
    resid_grad: list[np.ndarray | None] = [None] * task.n
    batches = list(task.batches(batch_size))
    with torch.enable_grad():
        for idx, tokens in tqdm(batches, desc="attribution", leave=False, disable=not progress):
            store: dict = {}
            logits = model.run_with_hooks(tokens.to(device), fwd_hooks=[(subject.hook_name, splice_hook(sae, store))])
            metric = task.logit_diff(logits[:, -1].float(), idx).sum()
            metric.backward()
            f = store["f"].detach()
            attribution = (f * store["f"].grad).float()
            b, t, feat = torch.nonzero(f > 0, as_tuple=True)
            parts.append(pd.DataFrame({
                "prompt": np.asarray(idx)[b.cpu().numpy()].astype(np.int32),
                "position": t.cpu().numpy().astype(np.int32),
                "feature": feat.cpu().numpy().astype(np.int32),
                "value": attribution[b, t, feat].cpu().numpy().astype(np.float32),
                "activation": f[b, t, feat].float().cpu().numpy().astype(np.float32),
            }))
            grads = store["x_hat"].grad.float().cpu().numpy()
            for row, prompt in enumerate(np.asarray(idx)):
                resid_grad[int(prompt)] = grads[row].copy()
            del store, logits, metric, f, attribution
    table = pd.concat(parts, ignore_index=True) if parts else _empty_table()
    table = table.sort_values(["prompt", "position", "feature"], kind="stable").reset_index(drop=True)
    return Attributions(table=table, n_prompts=task.n, d_sae=subject.d_sae, prefix_len=int(task.prefix_len),
                        lengths=np.asarray(task.lengths), resid_grad=resid_grad)


def _aggregate(table: pd.DataFrame, lengths: np.ndarray, how: Aggregation) -> pd.DataFrame:
    """One value per (prompt, feature) from the position-level rows."""
    if table.empty:
        return table[["prompt", "feature", "value"]]
    if how is Aggregation.final:
        last = lengths[table["prompt"].to_numpy()] - 1
        rows = table[table["position"].to_numpy() == last]
        return rows[["prompt", "feature", "value"]]
    if how is Aggregation.sum:
        return table.groupby(["prompt", "feature"], as_index=False, sort=True)["value"].sum()
    if how is Aggregation.max_abs:
        # the signed value of largest magnitude; ties go to the earliest position
        order = table.assign(_abs=table["value"].abs()).sort_values(
            ["prompt", "feature", "_abs", "position"], ascending=[True, True, False, True], kind="stable")
        return order.drop_duplicates(["prompt", "feature"], keep="first")[["prompt", "feature", "value"]]
    if how is Aggregation.last_nonzero:
        # the blog's: the value at the last position where the attribution is non-zero
        rows = table[table["value"] != 0].sort_values(["prompt", "feature", "position"], kind="stable")
        return rows.drop_duplicates(["prompt", "feature"], keep="last")[["prompt", "feature", "value"]]
    raise FeatsweepError(f"attribution.aggregation={how!r} is not one of {[a.value for a in Aggregation]}.")


def aggregated_matrix(attrs: Attributions, aggregation: Aggregation | str, exclude_prefix: bool) -> pd.DataFrame:
    """Dense prompts x active features matrix after position aggregation (no feature selection)."""
    table = attrs.table
    if exclude_prefix:
        table = table[table["position"].to_numpy() >= attrs.prefix_len]
    agg = _aggregate(table, np.asarray(attrs.lengths), Aggregation(aggregation))
    features = np.unique(agg["feature"].to_numpy()).astype(int)
    dense = np.zeros((attrs.n_prompts, len(features)), dtype=np.float64)
    if len(agg):
        cols = np.searchsorted(features, agg["feature"].to_numpy())
        dense[agg["prompt"].to_numpy().astype(int), cols] = agg["value"].to_numpy()
    return pd.DataFrame(dense, index=pd.RangeIndex(attrs.n_prompts, name="prompt"),
                        columns=pd.Index(features.tolist(), name="feature"))


def select_features(matrix: pd.DataFrame, selection: Selection | str, min_fraction: float = 0.9,
                    top_k: int = 200) -> pd.DataFrame:
    """Keep the features that pass ``selection`` (columns stay in ascending feature order).

    all_nonzero: non-zero on every prompt (the blog's). min_fraction: non-zero on >= ``min_fraction`` of the
    prompts (inclusive). topk: the ``top_k`` features by mean |attribution| over all prompts (zeros included),
    ties broken by the lower feature id.
    """
    selection = Selection(selection)
    if matrix.shape[1] == 0:
        return matrix
    values = matrix.to_numpy()
    nonzero = (values != 0).mean(axis=0)
    if selection is Selection.all_nonzero:
        keep = nonzero == 1.0
    elif selection is Selection.min_fraction:
        if not 0 < min_fraction <= 1:
            raise FeatsweepError(f"attribution.min_fraction={min_fraction}: use a fraction in (0, 1].")
        keep = nonzero >= min_fraction - 1e-12
    elif selection is Selection.topk:
        if top_k < 1:
            raise FeatsweepError(f"attribution.top_k={top_k}: use a positive number of features.")
        score = np.abs(values).mean(axis=0)
        order = np.lexsort((np.asarray(matrix.columns), -score))  # by score desc, then feature id asc
        keep = np.zeros(values.shape[1], bool)
        keep[order[:top_k]] = True
        keep &= score > 0
    else:  # pragma: no cover - the enum is closed
        raise FeatsweepError(f"attribution.selection={selection!r} is unknown.")
    return matrix.loc[:, keep]


def attribution_matrix(attrs: Attributions, cfg: AttributionConfig) -> pd.DataFrame:
    """Prompts x selected features: aggregate positions, drop the prefix if asked, select features.

    Index is prompt 0..n-1, columns are int feature ids; a feature inactive on a prompt has 0.
    """
    matrix = aggregated_matrix(attrs, cfg.aggregation, cfg.exclude_prefix)
    return select_features(matrix, cfg.selection, cfg.min_fraction, cfg.top_k)


@dataclass
class AttributionOutput:
    """What the attribution stage hands to the later stages."""

    attrs: Attributions  # the long (prompt, position, feature) table and the residual gradients
    matrix: pd.DataFrame  # prompts x selected features, aggregated over positions


def attribution_stage(subject, task, cfg: AttributionConfig) -> tuple[AttributionOutput, StageResult]:
    """Compute, aggregate and select; log the long table. Sets ``skip_reason`` when no feature survives."""
    attrs = compute_attributions(subject, task, cfg.batch_size)
    full = aggregated_matrix(attrs, cfg.aggregation, cfg.exclude_prefix)
    matrix = select_features(full, cfg.selection, cfg.min_fraction, cfg.top_k)
    table = attrs.table
    n_tokens = int(np.sum(attrs.lengths))
    metrics = {
        "attribution.n_prompts": float(attrs.n_prompts),
        "attribution.n_active_entries": float(len(table)),  # (prompt, position, feature) with a_i > 0
        "attribution.n_active_pairs": float(int((full.to_numpy() != 0).sum())),  # (prompt, feature), aggregated
        "attribution.n_active_features": float(table["feature"].nunique()),
        "attribution.n_candidate_features": float(full.shape[1]),  # after aggregation and prefix exclusion
        "attribution.n_selected_features": float(matrix.shape[1]),
        "attribution.mean_active_per_token": float(len(table) / max(n_tokens, 1)),
        "attribution.prefix_len": float(attrs.prefix_len),
    }
    result = StageResult(metrics=metrics, tables={"tables/attributions.parquet": table.copy()})
    if matrix.shape[1] == 0:
        reason = (f"No feature survived attribution.selection={Selection(cfg.selection).value} "
                  f"({full.shape[1]} candidate features on {attrs.n_prompts} prompts). Relax the selection, e.g. "
                  f"attribution.selection=min_fraction attribution.min_fraction=0.5, or attribution.selection=topk.")
        if full.shape[1] == 0:
            reason = (f"No feature has a non-zero attribution after aggregation "
                      f"(attribution.aggregation={Aggregation(cfg.aggregation).value}, "
                      f"attribution.exclude_prefix={cfg.exclude_prefix}). Try attribution.aggregation=sum or "
                      f"attribution.exclude_prefix=false.")
        result.skip_reason = reason
        result.tags["attribution.skip_reason"] = reason
        log.warning(reason)
    elif matrix.shape[1] < 2:
        reason = (f"Only {matrix.shape[1]} feature survived attribution.selection={Selection(cfg.selection).value}; "
                  "a co-occurrence network needs at least 2. Relax the selection, e.g. "
                  "attribution.selection=min_fraction or attribution.selection=topk.")
        result.skip_reason = reason
        result.tags["attribution.skip_reason"] = reason
        log.warning(reason)
    return AttributionOutput(attrs, matrix), result
