"""One verdict per hypothesis, from a written-down rule: ``supported``, ``not_supported`` or ``inconclusive``.

Each rule reads only the run's logged metrics, so a reviewer can re-derive the verdict from the numbers.
``ALPHA`` is the significance level of every rule; every p-value used is already corrected for its family.

* **H1, clusters are distinct** (``h1.verdict``). Inconclusive when fewer than 2 clusters are kept or a
  needed null did not run (``clustering.n_null``, ``n_rewire``, ``n_bootstrap`` or ``n_continuum`` = 0).
  Supported when all of:
  (a) the modularity beats the edge-matched permutation null (``h1.matched_modularity_p < ALPHA``): there is
  more community structure than as many chance edges give; (b) the partition is stable under resampling the
  prompts (``h1.bootstrap_ari_mean >= MIN_BOOTSTRAP_ARI``); (c) the clusters are DISCRETE, not cuts of a
  continuum: their mean silhouette (``h1.silhouette``) beats reclustered draws of the best-fitting continuum of
  every shape, segment, circle and sheet (``h1.continuum_p < ALPHA``, the largest p over the shapes;
  ``featsweep.hypotheses.discreteness``); (d) at least one metric differs across the kept clusters beyond
  what both graph-aware nulls give: reclustering a degree-preserving rewiring of the same graph and
  reclustering the edge-matched graph of shuffled data (``min over metrics of max(h1.<metric>.null_p_adj,
  h1.<metric>.matched_null_p_adj) < ALPHA``; the nominal ANOVA p-values are not used: they are circular).
  A metric that varies smoothly along a continuum cannot make the verdict: on a continuum, (c) fails, and the
  conjunction is supported at most as often as (c) passes, at level ALPHA whatever (d) gives. So (d) does not
  also ask each metric to beat the continuum draws (``h1.<metric>.continuum_null_p_adj``, kept for reading one
  metric on its own): once (c) has rejected every fitted continuum as a model of the data, its draws are not a
  null of the data, and a segment's end effects alone then cost planted groups their degree test (measured in
  docs/statistics.md). Inconclusive instead when (c) or (d) fails only because its null had too few draws
  for any p-value to pass (``1 / (1 + n_valid)`` for (c), ``n_metrics / (1 + n_draws)`` for (d), ``>=
  ALPHA``). Otherwise not supported; ``h1.verdict_reason`` names every criterion that failed.
* **H2, steering a set from one cluster hurts more** (``h2.verdict``). Uses the label-permutation tests of
  ``featsweep.hypotheses.stats.permutation_diff`` over set sizes >= 2: ``h2.p``/``h2.diff`` (within vs between) and
  ``h2.within_vs_random.p``/``.diff`` (within vs a random set of kept features). Supported when both are
  significant with within-cluster sets keeping LESS probability (``diff < 0``); not supported when neither
  is; inconclusive when exactly one is (within hurts more than one reference but not the other), or a test
  could not run.
* **H3, centrality predicts importance** (``h3.verdict``). Supported when some centrality's slope is
  significant after Bonferroni over the centralities (``h3.<c>.p_adj < ALPHA``) with higher centrality giving
  LOWER probability (``slope < 0``) and it stays significant with |attribution| as a covariate
  (``h3.<c>.p_partial < ALPHA``); inconclusive when a slope is significant but not beyond |attribution|
  (or only with the opposite sign), or no regression could run; otherwise not supported. Per run, i.e. at
  the run's ``steering.factor``.
* **H4, the task's clusters are co-occurrence families** (``h4.verdict``; ``featsweep.hypotheses.h4``).
  Inconclusive when fewer than 2 clusters are kept, a null did not run (``cooccurrence.n_permutations`` or
  ``n_matched`` = 0), or its draws are too few for any p-value to fall below ``ALPHA``
  (``1 / (1 + n) >= ALPHA``). Supported when the within-minus-between co-occurrence (``h4.statistic``) is
  positive and beats both nulls: the cluster labels permuted among the kept features (``h4.perm_p < ALPHA``)
  and random latents matched in firing density (``h4.matched_p < ALPHA``). Not supported when neither does;
  inconclusive when exactly one does (the gap is beyond one null but not the other). ``h4.ami`` is descriptive.
"""

from __future__ import annotations

import math

ALPHA = 0.05
MIN_BOOTSTRAP_ARI = 0.5
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not_supported", "inconclusive"
CENTRALITIES = ["degree", "betweenness", "closeness", "eigenvector"]


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def h1_verdict(metrics: dict, n_kept: int) -> tuple[str, str]:
    if n_kept < 2:
        return INCONCLUSIVE, f"{n_kept} kept cluster(s): at least 2 are needed"
    matched = metrics.get("h1.matched_modularity_p")
    ari = metrics.get("h1.bootstrap_ari_mean")
    continuum = metrics.get("h1.continuum_p")
    # a metric passes when BOTH graph-aware nulls reject it: the larger of its adjusted p-values counts
    nulls = (".null_p_adj", ".matched_null_p_adj")
    names = [k[:-len(nulls[0])] for k in metrics if k.endswith(nulls[0]) and not k.endswith(
        (nulls[1], ".continuum_null_p_adj"))]
    null_adj = [max(metrics[name + n] for n in nulls) for name in names
                if all(_finite(metrics.get(name + n)) for n in nulls)]
    missing = [name for name, ok in (("edge-matched null (clustering.n_null)", _finite(matched)),
                                     ("bootstrap (clustering.n_bootstrap)", _finite(ari)),
                                     ("continuum null (clustering.n_continuum)", _finite(continuum)),
                                     ("graph-aware nulls of the cluster tests (clustering.n_rewire and n_null)",
                                      bool(null_adj))) if not ok]
    if missing:
        return INCONCLUSIVE, "not run: " + ", ".join(missing)
    checks = [(matched < ALPHA, f"modularity vs edge-matched null p={matched:.3g}"),
              (ari >= MIN_BOOTSTRAP_ARI, f"bootstrap ARI {ari:.2f} (needs >= {MIN_BOOTSTRAP_ARI})"),
              (continuum < ALPHA, f"discreteness: silhouette {metrics.get('h1.silhouette', float('nan')):.3g} vs "
                                  f"the fitted continua p={continuum:.3g}"),
              (min(null_adj) < ALPHA, f"smallest graph-aware-null p_adj={min(null_adj):.3g}")]
    # the smallest p-value each null's draws allow: below ALPHA, or the criterion cannot pass whatever the data
    shapes = _valid_draws(metrics, (".n_valid",), prefix="h1.continuum_")
    draws = _valid_draws(metrics, (".n_null_valid", ".n_matched_null_valid"))
    floors = [(2, 1 / (1 + min(shapes)) if shapes else 0.0, "clustering.n_continuum"),
              (3, len(null_adj) / (1 + min(draws)) if draws else 0.0, "clustering.n_null and clustering.n_rewire")]
    starved = [(k, floor, knob) for k, floor, knob in floors if not checks[k][0] and floor >= ALPHA]
    if starved and all(ok for k, (ok, _) in enumerate(checks) if k not in {s[0] for s in starved}):
        return INCONCLUSIVE, "; ".join(
            f"too few null draws: {checks[k][1]}, and the smallest p-value its draws allow is {floor:.3g} "
            f"(raise {knob})" for k, floor, knob in starved)
    failed = [text for ok, text in checks if not ok]
    if failed:
        return NOT_SUPPORTED, "fails: " + "; ".join(failed)
    return SUPPORTED, "; ".join(text for _, text in checks)


def _valid_draws(metrics: dict, suffixes: tuple[str, ...], prefix: str = "h1.") -> list[float]:
    """The valid-draw counts logged under ``suffixes`` (per metric or per shape)."""
    return [v for k, v in metrics.items() if k.startswith(prefix) and k.endswith(suffixes) and _finite(v)]


def h2_verdict(metrics: dict) -> tuple[str, str]:
    tests = {"between": (metrics.get("h2.p"), metrics.get("h2.diff")),
             "random": (metrics.get("h2.within_vs_random.p"), metrics.get("h2.within_vs_random.diff"))}
    if not all(_finite(p) and _finite(d) for p, d in tests.values()):
        return INCONCLUSIVE, "within vs between and within vs random need sets of size >= 2 of all three samplings"
    hurts = {name: p < ALPHA and d < 0 for name, (p, d) in tests.items()}
    text = "; ".join(f"within vs {name}: diff={d:.3g}, p={p:.3g}" for name, (p, d) in tests.items())
    if all(hurts.values()):
        return SUPPORTED, text
    if not any(hurts.values()):
        return NOT_SUPPORTED, text
    return INCONCLUSIVE, text


def h3_verdict(metrics: dict) -> tuple[str, str]:
    ran = [c for c in CENTRALITIES if _finite(metrics.get(f"h3.{c}.p_adj"))]
    if not ran:
        return INCONCLUSIVE, "no centrality regression could run"
    significant = [c for c in ran if metrics[f"h3.{c}.p_adj"] < ALPHA]
    beyond = [c for c in significant if metrics[f"h3.{c}.slope"] < 0 and _finite(metrics.get(f"h3.{c}.p_partial"))
              and metrics[f"h3.{c}.p_partial"] < ALPHA]
    if beyond:
        return SUPPORTED, ", ".join(f"{c}: slope={metrics[f'h3.{c}.slope']:.3g}, p_adj={metrics[f'h3.{c}.p_adj']:.3g}, "
                                    f"p_partial={metrics[f'h3.{c}.p_partial']:.3g}" for c in beyond)
    if significant:
        return INCONCLUSIVE, (f"significant ({', '.join(significant)}) but not with a negative slope beyond "
                              "|attribution| (p_partial)")
    best = min(ran, key=lambda c: metrics[f"h3.{c}.p_adj"])
    return NOT_SUPPORTED, f"no centrality significant (smallest p_adj: {best} {metrics[f'h3.{best}.p_adj']:.3g})"


def h4_verdict(metrics: dict, n_kept: int) -> tuple[str, str]:
    if n_kept < 2:
        return INCONCLUSIVE, f"{n_kept} kept cluster(s): at least 2 are needed"
    nulls = {"label permutation": ("h4.perm", "cooccurrence.n_permutations"),
             "density-matched latents": ("h4.matched", "cooccurrence.n_matched")}
    missing = [knob for key, knob in nulls.values() if not _finite(metrics.get(f"{key}_p"))]
    if missing or not _finite(metrics.get("h4.statistic")):
        return INCONCLUSIVE, "not run: " + (", ".join(missing) if missing else "no within-cluster pair")
    few = [knob for key, knob in nulls.values() if 1 / (1 + metrics.get(f"{key}_n", 0)) >= ALPHA]
    if few:
        return INCONCLUSIVE, f"too few null draws for any p < {ALPHA}: raise " + " and ".join(few)
    stat = metrics["h4.statistic"]
    ps = {name: metrics[f"{key}_p"] for name, (key, _) in nulls.items()}
    text = f"statistic={stat:.3g}; " + "; ".join(f"{name} p={p:.3g}" for name, p in ps.items())
    beats = [stat > 0 and p < ALPHA for p in ps.values()]
    if all(beats):
        return SUPPORTED, text
    if not any(beats):
        return NOT_SUPPORTED, text
    return INCONCLUSIVE, text
