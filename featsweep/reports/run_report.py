"""The per-run ``report.html``: the four hypotheses, their statistics, verdicts and key plots on one page.

The page is self-contained (plots embedded as base64 PNG, no scripts, no external files), so MLflow's artifact
view renders it as it is. The pipeline hands every stage's result to :meth:`Report.collect` before logging it
(figures are closed once logged) and logs :meth:`Report.result` at the end of the run. The verdict rules are
those of ``featsweep.hypotheses.verdicts`` (its docstring is printed on the page).
"""

from __future__ import annotations

import base64
import html
import io
import math

from featsweep.hypotheses import verdicts
from featsweep.results import StageResult

REPORT = "report.html"
KEY_PLOTS = {
    "h1": ["plots/network.png", "plots/corr_heatmap_sorted.png", "plots/null_matched_modularity.png",
           "plots/null_continuum_silhouette.png", "plots/violins_centrality.png"],
    "h2": ["plots/steering_within_vs_between.png"],
    "h3": ["plots/steering_performance_vs_centrality.png"],
    "h4": ["plots/cooc_communities.png", "plots/cooc_degree.png"],
}
TITLES = {"h1": "H1: clustering reveals distinct groups of features",
          "h2": "H2: steering a set from one cluster hurts more than a set across clusters or a random set",
          "h3": "H3: centrality predicts a feature's importance",
          "h4": "H4: the task's clusters are co-occurrence families of ordinary text"}
HYPOTHESES = ("h1", "h2", "h3", "h4")
STAGE_OF = {"h1": "network", "h2": "steering", "h3": "steering", "h4": "cooccurrence"}
CONFIG_KEYS = ["model.name", "sae.release", "sae.hook_name", "task.filter", "attribution.selection",
               "attribution.aggregation", "clustering.threshold", "clustering.edges", "clustering.algorithm",
               "clustering.min_cluster_size", "clustering.recluster_kept", "steering.mode", "steering.scale",
               "steering.factor", "steering.factor_base", "cooccurrence.unit", "cooccurrence.measure",
               "cooccurrence.edge_threshold", "seed"]
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}"
         "th{background:#f3f3f3}td:first-child{text-align:left}.supported{color:#17702c;font-weight:bold}"
         ".not_supported{color:#a4161a;font-weight:bold}.inconclusive{color:#8a6d00;font-weight:bold}"
         "img{max-width:540px;margin:4px;border:1px solid #eee}pre{font-size:12px;background:#fafafa;padding:8px}"
         ".card{border:1px solid #ddd;border-radius:4px;padding:4px 12px;margin:10px 0}.cols{display:flex;gap:16px}"
         ".cols ul{flex:1;padding-left:18px}.ctx{font-family:monospace;font-size:12px;white-space:pre-wrap;color:#444}"
         "mark{background:#ffb347;font-weight:bold}.tok{font-family:monospace;font-size:12px;background:#f3f3f3;"
         "padding:0 3px;margin:0 1px}small{color:#666}")


class Report:
    """Collects what the stages produce and renders the page."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.images: dict[str, str] = {}  # artifact path -> base64 PNG
        self.cards: list[dict] = []  # one per kept cluster (featsweep/reports/dashboards.py)

    def collect(self, result: StageResult) -> None:
        self.metrics.update(result.metrics)
        self.tags.update(result.tags)
        wanted = {p for paths in KEY_PLOTS.values() for p in paths}
        for path, figure in result.figures.items():
            if path in wanted:
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
                self.images[path] = base64.b64encode(buffer.getvalue()).decode("ascii")

    def result(self, resolved: dict) -> StageResult:
        """The page as an artifact, plus the verdict tags of hypotheses whose stage did not run."""
        tags = {}
        for name in HYPOTHESES:
            if f"{name}.verdict" not in self.tags:
                tags[f"{name}.verdict"] = verdicts.INCONCLUSIVE
                tags[f"{name}.verdict_reason"] = f"the {STAGE_OF[name]} stage did not run or was skipped"
        self.tags.update(tags)
        return StageResult(tags=tags, files={REPORT: self.html(resolved).encode("utf-8")})

    def html(self, resolved: dict) -> str:
        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featsweep report</title>"
                 f"<style>{STYLE}</style></head><body><h1>featsweep run report</h1>",
                 _table(["setting", "value"], [[k, _flat(resolved, k)] for k in CONFIG_KEYS if _flat(resolved, k) != ""]),
                 _table(["hypothesis", "verdict", "why"],
                        [[TITLES[h], _verdict(self.tags.get(f"{h}.verdict", "")), self.tags.get(f"{h}.verdict_reason", "")]
                         for h in HYPOTHESES], raw_cols={1})]
        for name in HYPOTHESES:
            parts.append(f"<h2>{html.escape(TITLES[name])}: {_verdict(self.tags.get(f'{name}.verdict', ''))}</h2>")
            parts.append(getattr(self, f"_{name}")())
            parts += [f"<img alt='{html.escape(p)}' src='data:image/png;base64,{self.images[p]}'>"
                      for p in KEY_PLOTS[name] if p in self.images]
            if name == "h1" and self.cards:
                parts.append(self._clusters())
        parts.append(f"<h2>The verdict rules</h2><pre>{html.escape(verdicts.__doc__ or '')}</pre></body></html>")
        return "\n".join(parts)

    def _h1(self) -> str:
        m = self.metrics
        summary = [[k, _fmt(m.get(k))] for k in (
            "network.n_features", "network.n_edges", "h1.null_edges_mean", "network.n_kept_clusters",
            "network.modularity", "h1.null_matched_modularity_mean", "h1.matched_modularity_p",
            "h1.bootstrap_ari_mean", "h1.silhouette", "h1.continuum_segment.silhouette_mean",
            "h1.continuum_circle.silhouette_mean", "h1.continuum_sheet.silhouette_mean", "h1.continuum_p") if k in m]
        columns = ["anova_F", "anova_p", "anova_p_adj", "null_p", "null_p_adj", "matched_null_p",
                   "matched_null_p_adj", "continuum_null_p", "continuum_null_p_adj", "kruskal_H", "kruskal_p"]
        metrics = sorted({k.split(".")[1] for k in m if k.startswith("h1.") and k.endswith(".anova_F")})
        rows = [[metric, *[_fmt(m.get(f"h1.{metric}.{c}")) for c in columns]] for metric in metrics]
        note = ("<p>anova_p / anova_p_adj are NOMINAL (circular: the clusters and the centralities come from one "
                "graph). null_p: against degree-preserving rewirings, reclustered; matched_null_p: against "
                "edge-matched graphs of shuffled data, reclustered; continuum_null_p: against draws of the fitted "
                "continua (segment, circle, sheet), reclustered, the largest p over the shapes: the reading of one "
                "metric that survives a gradient along a continuum. *_adj: Bonferroni over the metrics. "
                "Discreteness: the mean silhouette of the kept clusters against each fitted continuum's draws "
                "(h1.continuum_p, the largest p over the shapes). The verdict asks for discreteness and for a "
                "metric beyond null_p_adj and matched_null_p_adj; a metric that only varies along a continuum "
                "cannot make it, because on a continuum discreteness fails.</p>")
        if "h1.centrality_estimate" in self.tags:
            note += f"<p>{html.escape(self.tags['h1.centrality_estimate'])}</p>"
        return _table(["network", "value"], summary) + note + (_table(["metric", *columns], rows) if rows else "")

    def _clusters(self) -> str:
        """A card per kept cluster: size, top features (logit lens, contexts, Neuronpedia), answers driving it."""
        parts = ["<h3>What the kept clusters are</h3><p>Top features by mean |attribution|, each with the tokens its "
                 "decoder direction promotes and suppresses (W_dec[i] @ W_U) and its top corpus contexts (max token "
                 "marked). Answers: mean attribution of the cluster's features over the prompts with that correct "
                 "answer. Every feature: <a href='features.html'>features.html</a>.</p>"]
        for card in self.cards:
            features = []
            for f in card["features"]:
                url = f["url"] if isinstance(f["url"], str) and f["url"] else ""
                name = f"<a href='{html.escape(url)}'>{f['feature']}</a>" if url else f"{f['feature']}"
                contexts = "".join(f"<div class='ctx'>{html.escape(c.left)}<mark>{html.escape(c.token)}</mark>"
                                   f"{html.escape(c.right)} <small>{c.activation:.3g}</small></div>"
                                   for c in f["contexts"].itertuples())
                features.append(f"<li><b>{name}</b> <small>mean |attr| {f['mean_abs']:.3g}</small> promotes "
                                f"{_tokens(f['promoted'][:6])} suppresses {_tokens(f['suppressed'][:4])}"
                                f"{contexts or '<div><small>never fires in the corpus</small></div>'}</li>")
            answers = card["answers"]
            table = _table(["answer", "prompts", "mean attribution"],
                           [[a.answer, a.n_prompts, _fmt(a.mean_attribution)] for a in answers.itertuples()])
            top = html.escape(answers.iloc[0]["answer"]) if len(answers) else "?"
            parts.append(f"<div class='card'><h4>Cluster {card['cluster']}: {card['size']} features, driven most by "
                         f"<i>{top}</i></h4><div class='cols'><ul>{''.join(features)}</ul>{table}</div></div>")
        return "".join(parts)

    def _h2(self) -> str:
        m = self.metrics
        keys = ["h2.within.mean_prob", "h2.between.mean_prob", "h2.random.mean_prob", "h2.diff", "h2.p",
                "h2.within_vs_random.diff", "h2.within_vs_random.p"]
        sizes = sorted({int(k.split(".")[1][4:]) for k in m if k.startswith("h2.size") and k.endswith("_mean_prob")})
        per_size = [[str(n), *[_fmt(m.get(f"h2.size{n}.{c}")) for c in
                               ("within_mean_prob", "between_mean_prob", "random_mean_prob", "diff", "p", "p_adj")]]
                    for n in sizes]
        return (_table(["statistic", "value"], [[k, _fmt(m[k])] for k in keys if k in m])
                + _table(["size", "within", "between", "random", "diff", "p", "p_adj"], per_size)
                + f"<p>{html.escape(self.tags.get('steering.h2_test', self.tags.get('steering.h2', '')))}</p>")

    def _h3(self) -> str:
        m = self.metrics
        columns = ["slope", "r2", "p", "p_adj", "p_partial"]
        rows = [[c, *[_fmt(m.get(f"h3.{c}.{k}")) for k in columns]] for c in verdicts.CENTRALITIES
                if f"h3.{c}.p" in m]
        return _table(["centrality", *columns], rows) + (
            f"<p>performance: {html.escape(self.tags.get('steering.h3_performance', ''))} at this run's "
            "steering.factor; p_adj: Bonferroni over the centralities; p_partial: with mean |attribution| as a "
            "covariate</p>" if rows else "")


    def _h4(self) -> str:
        m = self.metrics
        dictionary = [[k, _fmt(m.get(k))] for k in (
            "cooc.n_units", "cooc.n_active_latents", "cooc.mean_active_per_unit", "cooc.n_pairs", "cooc.edge_threshold",
            "cooc.n_edges", "cooc.largest_component", "cooc.n_communities", "cooc.modularity") if k in m]
        tests = [[k, _fmt(m.get(k))] for k in (
            "h4.n_features", "h4.within_mean", "h4.between_mean", "h4.statistic", "h4.perm_null_mean", "h4.perm_p",
            "h4.matched_null_mean", "h4.matched_p", "h4.ami") if k in m]
        error = self.tags.get("cooc.error")
        return (_table(["dictionary graph", "value"], dictionary) + _table(["H4", "value"], tests)
                + (f"<p>{html.escape(error)}</p>" if error else "")
                + ("<p>statistic: mean corpus co-occurrence of kept features in the same task cluster minus in "
                   "different clusters; perm_p: cluster labels permuted; matched_p: random latents of matched "
                   "firing density; ami: task clusters vs dictionary communities (descriptive).</p>"
                   if tests else ""))


def _flat(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return node


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.3g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4) else f"{value:.4g}"
    return str(value)


def _tokens(tokens: list[str]) -> str:
    return "".join(f"<span class='tok'>{html.escape(repr(t)[1:-1])}</span>" for t in tokens)


def _verdict(verdict: str) -> str:
    return f"<span class='{html.escape(verdict)}'>{html.escape(verdict or 'not run')}</span>"


def _table(header: list[str], rows: list[list], raw_cols: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell if k in raw_cols else html.escape(str(cell))}</td>"
                                    for k, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
