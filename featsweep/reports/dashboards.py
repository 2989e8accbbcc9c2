"""What the network's features and clusters are: feature dashboards and cluster descriptions, all offline.

From the corpus stage (``featsweep/stages/corpus.py``) and the network:

* ``features.html``: a dashboard for every feature of the network (SAEDashboard's essentials): firing density,
  max and quantiles, the activation histogram, the logit-lens tokens (top and bottom ``W_dec[i] @ W_U``), the
  top-activating contexts with the max token marked, and the Neuronpedia link where the SAE has one;
* ``tables/feature_contexts.parquet``: those contexts, one row per (feature, rank);
* ``tables/cluster_answers.parquet``: per kept cluster and correct answer the mean attribution of the cluster's
  features over the prompts with that answer (``mean_attribution``) and its rank within the cluster (1 = the
  answer that drives the cluster most);
* the cluster cards of ``report.html`` (:func:`cluster_cards`, rendered by ``featsweep.report``).
"""

from __future__ import annotations

import html
from typing import Optional

import numpy as np
import pandas as pd

from featsweep.results import StageResult
from featsweep.stages.corpus import LEFT, QUANTILES, CorpusStats

FEATURES_PAGE = "features.html"
N_CARD_FEATURES = 5  # features per cluster card
N_CARD_CONTEXTS = 3  # contexts per feature on a card
N_PAGE_CONTEXTS = 10  # contexts per feature on features.html
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
         ".feat{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:10px 0}"
         ".ctx{font-family:monospace;font-size:12px;white-space:pre-wrap;margin:1px 0}"
         "mark{background:#ffb347;font-weight:bold}.pos{color:#17702c}.neg{color:#a4161a}"
         ".tok{font-family:monospace;font-size:12px;background:#f3f3f3;padding:0 3px;margin:0 2px}"
         "small{color:#666}svg{vertical-align:middle}")


class TokenText:
    """Token ids to readable text pieces (decoded one id at a time, memoised); special tokens such as the BOS
    that separates documents show as ``SEPARATOR``."""

    SEPARATOR = " ¶ "

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache = {int(i): self.SEPARATOR for i in getattr(tokenizer, "all_special_ids", [])}

    def __call__(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([int(token_id)])
        return self.cache[token_id]

    def join(self, ids) -> str:
        return "".join(self(int(i)) for i in ids)


def feature_contexts(stats: CorpusStats, features, text: TokenText) -> pd.DataFrame:
    """The top-activating contexts of ``features``: feature, rank, activation, left, token, right, token_id."""
    rows = []
    for feature in features:
        for rank, (value, window) in enumerate(zip(stats.top_values[feature], stats.top_windows[feature]), 1):
            if value <= 0:
                break
            rows.append((int(feature), rank, float(value), text.join(window[:LEFT]), text(int(window[LEFT])),
                         text.join(window[LEFT + 1 :]), int(window[LEFT])))
    return pd.DataFrame(rows, columns=["feature", "rank", "activation", "left", "token", "right", "token_id"])


def lens_tokens(stats: CorpusStats, feature: int, text: TokenText) -> tuple[list[str], list[str]]:
    return [text(int(t)) for t in stats.lens_top[feature]], [text(int(t)) for t in stats.lens_bottom[feature]]


def cluster_answers(network, answers: pd.Series) -> pd.DataFrame:
    """Per kept cluster and correct answer: the mean over the answer's prompts of the cluster's mean attribution."""
    rows = []
    members = network.features.groupby("cluster")["feature"].apply(list)
    for cluster in network.kept_clusters:
        columns = [f for f in members[cluster] if f in network.matrix.columns]
        score = network.matrix[columns].to_numpy(dtype=float).mean(axis=1)  # per prompt: the cluster's mean
        frame = pd.DataFrame({"answer": answers.to_numpy()[network.matrix.index.to_numpy()], "score": score})
        per = frame.groupby("answer")["score"].agg(["mean", "size"]).sort_values("mean", ascending=False,
                                                                               kind="stable")
        for rank, (answer, row) in enumerate(per.iterrows(), 1):
            rows.append((int(cluster), str(answer).strip(), int(row["size"]), float(row["mean"]), rank))
    return pd.DataFrame(rows, columns=["cluster", "answer", "n_prompts", "mean_attribution", "rank"])


def cluster_cards(network, stats: CorpusStats, answers: pd.DataFrame, contexts: pd.DataFrame,
                  text: TokenText) -> list[dict]:
    """One card per kept cluster: its size, top features by mean |attribution| (with their logit-lens tokens,
    contexts and Neuronpedia link) and its answer table."""
    cards = []
    table = network.features
    for cluster in network.kept_clusters:
        members = table[table["cluster"] == cluster].sort_values("mean_abs", ascending=False, kind="stable")
        top = []
        for _, row in members.head(N_CARD_FEATURES).iterrows():
            feature = int(row["feature"])
            promoted, suppressed = lens_tokens(stats, feature, text)
            top.append({"feature": feature, "mean_abs": float(row["mean_abs"]), "promoted": promoted,
                        "suppressed": suppressed, "url": row.get("neuronpedia_url"),
                        "contexts": contexts[contexts["feature"] == feature].head(N_CARD_CONTEXTS)})
        cards.append({"cluster": int(cluster), "size": len(members), "features": top,
                      "answers": answers[answers["cluster"] == cluster]})
    return cards


def describe_network(network, stats: CorpusStats, answers: pd.Series, tokenizer
                     ) -> tuple[StageResult, list[dict]]:
    """The dashboards page and tables (a StageResult to log) and the cluster cards for report.html."""
    text = TokenText(tokenizer)
    features = [int(f) for f in network.features["feature"]]
    contexts = feature_contexts(stats, features, text)
    by_answer = cluster_answers(network, answers)
    cards = cluster_cards(network, stats, by_answer, contexts, text)
    page = features_page(network, stats, contexts, text)
    result = StageResult(tables={"tables/feature_contexts.parquet": contexts,
                                 "tables/cluster_answers.parquet": by_answer},
                         files={FEATURES_PAGE: page.encode("utf-8")})
    return result, cards


def context_html(row) -> str:
    return (f"<div class='ctx'><small>{row.activation:.3g}</small> {html.escape(row.left)}"
            f"<mark>{html.escape(row.token)}</mark>{html.escape(row.right)}</div>")


def tokens_html(tokens: list[str], css: str) -> str:
    return "".join(f"<span class='tok {css}'>{html.escape(repr(t)[1:-1])}</span>" for t in tokens)


def histogram_svg(counts: np.ndarray, width: int = 220, height: int = 40) -> str:
    """The latent's activation histogram (log-spaced bins, empty ends trimmed) as a tiny inline SVG."""
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return ""
    counts = counts[nonzero[0] : nonzero[-1] + 1]
    bar = width / len(counts)
    peak = counts.max()
    rects = "".join(f"<rect x='{i * bar:.1f}' y='{height - height * c / peak:.1f}' width='{max(bar - 0.5, 0.5):.1f}' "
                    f"height='{height * c / peak:.1f}' fill='#4c72b0'/>" for i, c in enumerate(counts) if c)
    return f"<svg width='{width}' height='{height}'>{rects}</svg>"


def link(url: Optional[str]) -> str:
    if not isinstance(url, str) or not url:
        return ""
    return f" · <a href='{html.escape(url)}'>Neuronpedia</a>"


def feature_html(row, stats: CorpusStats, contexts: pd.DataFrame, text: TokenText) -> str:
    feature = int(row["feature"])
    promoted, suppressed = lens_tokens(stats, feature, text)
    kept = "kept" if row["kept"] else "not kept"
    head = (f"<b id='f{feature}'>Feature {feature}</b> · cluster {int(row['cluster'])} ({kept}) · "
            f"mean |attribution| {row['mean_abs']:.3g}{link(row.get('neuronpedia_url'))}")
    rows = contexts[contexts["feature"] == feature].head(N_PAGE_CONTEXTS)
    body = "".join(context_html(r) for r in rows.itertuples()) or "<div><small>never fires in the corpus</small></div>"
    return (f"<div class='feat'>{head}<br>{row['_stats']} {histogram_svg(stats.hist[feature])}"
            f"<div>promotes {tokens_html(promoted, 'pos')}</div><div>suppresses {tokens_html(suppressed, 'neg')}</div>"
            f"{body}</div>")


def features_page(network, stats: CorpusStats, contexts: pd.DataFrame, text: TokenText) -> str:
    table = network.features.sort_values(["kept", "cluster", "mean_abs"], ascending=[False, True, False],
                                         kind="stable").copy()
    ids = table["feature"].astype(int).to_numpy()
    quantiles = stats.quantiles()[ids]
    table["_stats"] = [f"density {stats.density[f]:.3g} · max {stats.max[f]:.3g} · "
                       + " ".join(f"q{round(q * 100)} {v:.3g}" for q, v in zip(QUANTILES, qs))
                       for f, qs in zip(ids, quantiles)]
    blocks = "".join(feature_html(row, stats, contexts, text) for _, row in table.iterrows())
    intro = (f"<p>{len(table)} features of the network, kept clusters first. Corpus: "
             f"{html.escape(stats.description)} (digest {stats.digest}), {stats.n_tokens} tokens in rows of "
             f"{stats.context}. Density: the share of tokens where the feature fires; quantiles of its activation "
             f"where it fires (histogram estimate); the histogram's bins are log-spaced. Promotes / suppresses: the "
             f"top and bottom tokens of W_dec[i] @ W_U. Contexts: the rows where the feature's largest activation is "
             f"largest, the max token marked; ¶ separates documents.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featsweep features</title><style>{STYLE}"
            f"</style></head><body><h1>Feature dashboards</h1>{intro}{blocks}</body></html>")
