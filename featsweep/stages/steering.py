"""Steering experiments: every kept feature alone (H3) and sampled feature sets (H2), plus the linear preview.

Performance measure for H2/H3: the MEAN CORRECT-TOKEN PROBABILITY over the task's prompts after steering
(the blog's main metric; lower = the steered features mattered more). Per-prompt tables keep every
metric (prob, rank, logit, top-10 entropy, logit difference) and its drop from the baseline
(``drop_<metric> = baseline - steered``; for rank and entropy a negative drop means worse).

Set sampling (``steering.sampling``; seeded ``numpy.random.Generator(seed)``):

* ``within``: all ``n`` features from one kept cluster. Samples rotate through the kept clusters (in a
  seeded order), so every cluster gets the same number of sets (+-1). Every kept cluster must be able to
  supply ``n`` distinct features: ``n`` larger than the smallest kept cluster is an error.
* ``between``: the ``n`` slots are spread over the kept clusters as evenly as possible (the blog's
  balanced representation): slot ``j`` of sample ``s`` goes to the cluster at ``s*n + j`` of a seeded
  cyclic order. With ``n <= K`` kept clusters a set has ``n`` distinct clusters and, over the samples,
  every cluster appears equally often; with ``n > K`` (allowed) clusters contribute ``floor(n/K)`` or
  ``ceil(n/K)`` features each. It needs at least two kept clusters, otherwise it is skipped (tagged).
* ``random``: ``n`` distinct features drawn uniformly from all kept features (the H2 control: what any set
  of that size does, cluster or not).

H2 statistics (``_h2_statistics``). The unit is the SET, and only sizes ``n >= 2`` are tested: a size-1
"within" set and a size-1 "between" set are both one kept feature, the same distribution by construction,
and pooling them would dilute any difference. The sets are not independent (a few dozen kept features fill
hundreds of set slots, so many sets share features), so a Mann-Whitney test that counts each set as an
independent observation is too liberal. Instead a label-permutation test (``featsweep.hypotheses.stats.permutation_diff``)
shuffles the within/between labels among the sets of each size: every permuted data set keeps the same
sets, outcomes and feature overlaps, so the dependence that feature reuse induces stays in the reference
distribution. (A mixed model with crossed random effects for every feature in a set was the alternative;
with 20 sets per size and up to 4 features per set it is poorly identified, and it assumes normal
outcomes on a bounded probability.) ``h2.p``/``h2.diff``: within vs between, stratified by size, the
statistic being the mean over sizes of ``mean(within) - mean(between)`` (negative: within hurts more);
``h2.within_vs_random.*`` the same against the random control; ``h2.size<n>.p_adj`` per size,
Bonferroni over the sizes.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import pandas as pd

from featsweep import plots
from featsweep.config import SetSampling, SteeringConfig, SteeringMode
from featsweep.errors import FeatsweepError
from featsweep.results import Network, StageResult
from featsweep.hypotheses.stats import CENTRALITIES, adjust_pvalues, centrality_regression, permutation_diff
from featsweep.engines.intervention import (Condition, SteeringEngine, fill_zero_scales, mean_activations, run_conditions,
                                steering_scales)
from featsweep.results import PERFORMANCE_COLUMNS
from featsweep.hypotheses.verdicts import h2_verdict, h3_verdict

log = logging.getLogger(__name__)

SINGLE_TABLE = "tables/steering_single.parquet"
FEATURES_TABLE = "tables/steering_features.parquet"
SETS_TABLE = "tables/steering_sets.parquet"
H3_PERFORMANCE = "mean_prob"


def sample_sets(clusters: dict[int, list[int]], set_sizes, samples_per_size: int, samplings,
                rng: np.random.Generator) -> list[dict]:
    """Draw the feature sets (see the module docstring). ``clusters``: kept cluster -> its features.
    Returns records with sampling, size, sample, features (sorted tuple) and clusters (sorted tuple)."""
    sizes = list(dict.fromkeys(int(n) for n in set_sizes))  # sizes >= 1 are checked by SteeringConfig
    samplings = [SetSampling(s) for s in samplings]
    kept = sorted(clusters)
    if not kept:
        raise FeatsweepError("No kept cluster to sample feature sets from.")
    smallest = min(kept, key=lambda c: len(clusters[c]))
    records = []
    for sampling in samplings:
        if sampling is SetSampling.between and len(kept) < 2:
            continue
        for n in sizes:
            if sampling is SetSampling.within and n > len(clusters[smallest]):
                raise FeatsweepError(
                    f"steering.set_sizes has n={n}, but kept cluster {smallest} has only {len(clusters[smallest])} "
                    f"features, so within-cluster sampling cannot draw {n} distinct features from every kept cluster. "
                    f"Use set sizes <= {len(clusters[smallest])} or raise clustering.min_cluster_size.")
            if sampling is SetSampling.between:
                need = -(-n // len(kept))
                if need > len(clusters[smallest]):
                    raise FeatsweepError(
                        f"steering.set_sizes has n={n}: balanced between-cluster sampling over {len(kept)} kept "
                        f"clusters needs {need} features from each, but cluster {smallest} has "
                        f"{len(clusters[smallest])}. Use smaller set sizes.")
            order = [kept[i] for i in rng.permutation(len(kept))]
            pool = np.asarray(sorted(f for c in kept for f in clusters[c]))
            for s in range(int(samples_per_size)):
                if sampling is SetSampling.random:
                    feats = sorted(int(f) for f in rng.choice(pool, size=min(n, len(pool)), replace=False))
                    home = sorted({c for c in kept for f in feats if f in clusters[c]})
                    records.append(dict(sampling=sampling.value, size=n, sample=s, features=tuple(feats),
                                        clusters=tuple(home)))
                    continue
                if sampling is SetSampling.within:
                    counts = {order[s % len(kept)]: n}
                else:
                    counts: dict[int, int] = {}
                    for j in range(n):
                        c = order[(s * n + j) % len(kept)]
                        counts[c] = counts.get(c, 0) + 1
                feats = []
                for c, k in counts.items():
                    feats += [int(f) for f in rng.choice(np.asarray(clusters[c]), size=k, replace=False)]
                records.append(dict(sampling=sampling.value, size=n, sample=s, features=tuple(sorted(feats)),
                                    clusters=tuple(sorted(counts))))
    return records


def mean_pairwise_corr(features, corr: Optional[pd.DataFrame]) -> float:
    """Mean correlation over the set's feature pairs (from ``network.corr``); NaN for one feature."""
    features = list(features)
    if len(features) < 2 or corr is None:
        return float("nan")
    values = []
    for i, a in enumerate(features):
        for b in features[i + 1:]:
            values.append(corr.loc[a, b] if a in corr.index and b in corr.columns else np.nan)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def steering_stage(subject, task, attrs, network: Optional[Network], baseline: pd.DataFrame,
                   gen_max: Optional[np.ndarray], cfg: SteeringConfig, seed: int) -> tuple[None, StageResult]:
    """Single-feature (H3) and feature-set (H2) experiments at this job's ``steering.factor``."""
    if network is None or not list(network.kept_clusters):
        return None, StageResult(skip_reason="steering skipped: the network stage kept no cluster. Lower "
                                 "clustering.min_cluster_size or clustering.threshold, or select more features.")
    t0 = time.perf_counter()
    kept = [int(c) for c in network.kept_clusters]
    table = network.features
    table = table[table["cluster"].isin(kept)].copy()
    table["feature"] = table["feature"].astype(int)
    clusters = {c: table.loc[table["cluster"] == c, "feature"].tolist() for c in kept}
    sets = sample_sets(clusters, cfg.set_sizes, cfg.samples_per_size, cfg.sampling, np.random.default_rng(seed))

    scales = steering_scales(cfg.scale, subject.d_sae, gen_max, attrs)
    n_zero = int((scales[table["feature"].to_numpy()] <= 0).sum())
    if cfg.zero_scale_fallback and SteeringMode(cfg.mode) is SteeringMode.negative:
        scales, n_zero = fill_zero_scales(scales, table["feature"], attrs)
    elif n_zero:
        log.warning("%d steered feature(s) have steering scale 0 and are not pushed at all "
                    "(steering.zero_scale_fallback=false).", n_zero)
    mean_acts = mean_activations(subject, task) if SteeringMode(cfg.mode) is SteeringMode.mean_ablate else None
    factor = float(cfg.factor) * float(cfg.factor_base)  # the push actually applied (README: the blog's base)
    singles = [Condition((f,), factor) for f in table["feature"]]
    set_conds = [Condition(r["features"], factor / len(r["features"]) if cfg.normalize_by_set_size else factor)
                 for r in sets]
    engine = SteeringEngine(subject, task, cfg, scales, mean_acts)  # also serves the linear preview
    perf = run_conditions(subject, task, cfg, scales, singles + set_conds, mean_acts, engine=engine)
    n_single = len(singles)
    base = baseline.set_index("prompt_idx").loc[np.arange(task.n)]

    result = StageResult(tags={"steering.h3_performance": "mean correct-token probability over prompts"})
    single, exact = _single_feature_table(table, perf, n_single, base, task.n)
    r = float("nan")
    grads = getattr(attrs, "resid_grad", None) if attrs is not None else None
    if grads is not None and len(grads) == task.n and all(g is not None for g in grads):
        linear = engine.linear_preview(singles, grads)
        single["linear_delta_logit_diff"] = linear.ravel()
        r = _pearson(linear, exact)
    else:
        linear = None
        result.tags["steering.linear_preview"] = "skipped: the attributions carry no resid_grad"
    result.metrics["steering.linear_vs_exact_r"] = r

    per_feature = _per_feature_table(single, table, scales)
    fits = _h3_regressions(per_feature, result)
    sets_df = _sets_table(sets, set_conds, perf, n_single, base, network.corr)
    _h2_statistics(sets_df, cfg, kept, seed, result)
    result.metrics.update({
        "steering.n_features": float(n_single),
        "steering.n_sets": float(len(sets_df)),
        "steering.n_kept_clusters": float(len(kept)),
        "steering.n_zero_scale": float(n_zero),
        "steering.single.mean_prob": float(single["prob"].mean()),
        "steering.single.mean_drop_prob": float(single["drop_prob"].mean()),
    })
    for name, (verdict, reason) in (("h2", h2_verdict(result.metrics)), ("h3", h3_verdict(result.metrics))):
        result.tags.update({f"{name}.verdict": verdict, f"{name}.verdict_reason": reason})
    # wall time is a tag, not a metric: metrics are results, and a rerun must reproduce them exactly
    result.tags["featsweep.steering_seconds"] = f"{time.perf_counter() - t0:.2f}"
    result.tables.update({SINGLE_TABLE: single, FEATURES_TABLE: per_feature, SETS_TABLE: sets_df})
    result.figures.update(_steering_figures(per_feature, sets_df, fits, kept, float(base["prob"].mean()), factor,
                                            linear, exact, r))
    return None, result


def _single_feature_table(table: pd.DataFrame, perf: dict, n_single: int, base: pd.DataFrame, n_prompts: int):
    """Per feature x prompt: every performance metric, its drop from baseline, and the exact logit-diff change."""
    single = pd.DataFrame({
        "feature": np.repeat(table["feature"].to_numpy(), n_prompts),
        "cluster": np.repeat(table["cluster"].to_numpy(), n_prompts),
        "prompt_idx": np.tile(np.arange(n_prompts), n_single),
    })
    for name in PERFORMANCE_COLUMNS:
        steered = perf[name][:n_single]
        single[name] = steered.ravel()
        single[f"drop_{name}"] = (base[name].to_numpy()[None, :] - steered).ravel()
    single["rank"] = single["rank"].round().astype(int)
    exact = perf["logit_diff"][:n_single] - base["logit_diff"].to_numpy()[None, :]
    single["exact_delta_logit_diff"] = exact.ravel()
    single["linear_delta_logit_diff"] = np.nan
    return single, exact


def _per_feature_table(single: pd.DataFrame, table: pd.DataFrame, scales: np.ndarray) -> pd.DataFrame:
    per_feature = single.groupby("feature", sort=False).agg(
        mean_prob=("prob", "mean"), mean_drop_prob=("drop_prob", "mean"), mean_logit_diff=("logit_diff", "mean"),
        mean_exact_delta_logit_diff=("exact_delta_logit_diff", "mean"),
        mean_linear_delta_logit_diff=("linear_delta_logit_diff", "mean")).reset_index()
    keep_cols = [c for c in ["feature", "cluster", *CENTRALITIES, "mean_abs", "gen_max_activation"] if c in table.columns]
    per_feature = table[keep_cols].merge(per_feature, on="feature", how="left")
    per_feature["scale"] = scales[per_feature["feature"].to_numpy()]
    return per_feature


def _h3_regressions(per_feature: pd.DataFrame, result: StageResult) -> dict:
    """H3: performance against each centrality, with |attribution| as a covariate; Bonferroni over centralities."""
    fits = {}
    covariate = per_feature["mean_abs"] if "mean_abs" in per_feature else None
    for cent in CENTRALITIES:
        if cent not in per_feature:
            fits[cent] = dict(slope=np.nan, intercept=np.nan, r2=np.nan, p=np.nan, p_partial=np.nan)
            continue
        fits[cent] = centrality_regression(per_feature[H3_PERFORMANCE], per_feature[cent], covariate)
    p_adj = adjust_pvalues([fits[c]["p"] for c in CENTRALITIES], "bonferroni")
    for cent, padj in zip(CENTRALITIES, p_adj):
        for key in ("slope", "intercept", "r2", "p", "p_partial"):
            result.metrics[f"h3.{cent}.{key}"] = float(fits[cent][key])
        result.metrics[f"h3.{cent}.p_adj"] = float(padj)
    return fits


def _sets_table(sets: list[dict], set_conds: list[Condition], perf: dict, n_single: int, base: pd.DataFrame,
                corr: Optional[pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for k, rec in enumerate(sets):
        row = dict(set_id=k, sampling=rec["sampling"], size=rec["size"], sample=rec["sample"],
                   features=",".join(map(str, rec["features"])), clusters=",".join(map(str, rec["clusters"])),
                   n_clusters=len(rec["clusters"]), factor=set_conds[k].factor,
                   mean_corr=mean_pairwise_corr(rec["features"], corr))
        for name in PERFORMANCE_COLUMNS:
            values = perf[name][n_single + k]
            row[name] = float(values.mean())
            row[f"drop_{name}"] = float((base[name].to_numpy() - values).mean())
        rows.append(row)
    set_cols = ["set_id", "sampling", "size", "sample", "features", "clusters", "n_clusters", "factor", "mean_corr",
                *PERFORMANCE_COLUMNS, *[f"drop_{n}" for n in PERFORMANCE_COLUMNS]]
    return pd.DataFrame(rows, columns=set_cols)


def _h2_statistics(sets_df: pd.DataFrame, cfg: SteeringConfig, kept: list[int], seed: int, result: StageResult) -> None:
    """H2 at the unit of the set (see the module docstring): within against between and against random."""
    metrics, sizes = result.metrics, list(dict.fromkeys(int(n) for n in cfg.set_sizes))
    for sampling in SetSampling:
        rows = sets_df[sets_df["sampling"] == sampling.value]
        if len(rows):
            metrics[f"h2.{sampling.value}.mean_prob"] = float(rows["prob"].mean())
        for n in sizes:
            at = rows[rows["size"] == n]
            if len(at):
                metrics[f"h2.size{n}.{sampling.value}_mean_prob"] = float(at["prob"].mean())
    tested = sets_df[sets_df["size"] >= 2]
    within = tested["sampling"] == "within"
    rng = np.random.default_rng([seed, 4])
    for name, other in (("h2", "between"), ("h2.within_vs_random", "random")):
        pair = tested[within | (tested["sampling"] == other)]
        res = permutation_diff(pair["prob"], pair["sampling"] == "within", pair["size"], cfg.n_permutations,
                               rng.integers(2**31))
        if np.isfinite(res["p"]):
            metrics[f"{name}.diff"], metrics[f"{name}.p"] = res["diff"], res["p"]
    if "h2.p" not in metrics:
        result.tags["steering.h2"] = ("skipped: needs within and between sets of size >= 2 (between needs >= 2 kept "
                                      f"clusters; kept {len(kept)}; steering.set_sizes={sizes}; "
                                      f"steering.sampling={[SetSampling(s).value for s in cfg.sampling]})")
        return
    size_p = {}
    for n in [n for n in sizes if n >= 2]:
        pair = tested[(tested["size"] == n) & tested["sampling"].isin(["within", "between"])]
        res = permutation_diff(pair["prob"], pair["sampling"] == "within", pair["size"], cfg.n_permutations,
                               rng.integers(2**31))
        metrics[f"h2.size{n}.diff"], metrics[f"h2.size{n}.p"] = res["diff"], res["p"]
        size_p[n] = res["p"]
    for n, padj in zip(size_p, adjust_pvalues(list(size_p.values()), "bonferroni")):
        metrics[f"h2.size{n}.p_adj"] = float(padj)
    result.tags["steering.h2_test"] = ("label permutation of sets within each size >= 2 (two-sided, "
                                       f"{cfg.n_permutations} permutations); diff = within - between mean prob")


def _steering_figures(per_feature, sets_df, fits, kept, base_prob, factor, linear, exact, r) -> dict:
    figures = {
        "plots/steering_performance_vs_centrality.png": plots.plot_performance_vs_centrality(
            per_feature, fits, H3_PERFORMANCE, [c for c in CENTRALITIES if c in per_feature], kept,
            title=f"performance against centrality (H3), factor {factor:g}"),
        "plots/steering_within_vs_between.png": plots.plot_within_between(
            sets_df, "prob", base_prob, title=f"within vs between clusters (H2), factor {factor:g}"),
        "plots/steering_cluster_breakdown.png": plots.plot_cluster_breakdown(per_feature, sets_df, kept, factor=factor, baseline=base_prob),
    }
    if linear is not None:
        figures["plots/steering_linear_vs_exact.png"] = plots.plot_linear_vs_exact(linear, exact, r, factor=factor)
    return figures
