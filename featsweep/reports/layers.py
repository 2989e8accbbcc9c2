"""Features followed across layers: the ``compare/`` section of an ``sae.layer`` sweep.

For each pair of adjacent swept layers (L, L'), from each run's network (``tables/features.parquet``) and its
SAE's decoder (loaded again from the run's logged config):

* ``frac_top1``: the fraction of L's kept features whose best decoder-cosine match among all of the SAE at L'
  (top-1, "Analyze Feature Flow") reaches ``MIN_COSINE``; ``frac_top1_null`` the same against the decoder at L'
  turned by a random rotation (chance in this dimension and width);
* ``frac_assigned``: the fraction of L's kept features whose one-to-one partner at L' ("SAE Match",
  ``linear_sum_assignment`` of L's kept features to all latents at L') reaches ``MIN_COSINE``;
* ``n_pairs``: those pairs whose partner is a kept feature at L' too; ``ami``: the adjusted mutual information
  of the two partitions (cluster at L, cluster at L') on those pairs (1: clusters carried over whole;
  0: no more than chance; NaN below 2 pairs);
* ``layer_flow.png``: kept clusters of each layer as columns, bands from a cluster at L to one at L' as wide as
  the features they share through the matching (the ``n_pairs`` pairs of ``layers/matches_L<a>_L<b>.csv``), and
  a grey band to "outside the network" for matched features whose partner is not a kept feature at L'.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from sklearn.metrics import adjusted_mutual_info_score

from featsweep.config import ModelSource
from featsweep.engines import layer_match as lm
from featsweep.errors import FeatsweepError
from featsweep.reports.figures import plot_layer_flow

LAYER = "sae.layer"
MIN_COSINE = 0.4  # the organism's chance top-1 cosine (rotated decoder) stays below ~0.35; SmolLM2's below ~0.2
NULL_SEED = 0
FEATURES = "tables/features.parquet"


def match_layers(features_a: pd.DataFrame, W_a: np.ndarray, features_b: pd.DataFrame, W_b: np.ndarray,
                 min_cosine: float = MIN_COSINE, seed: int = NULL_SEED) -> tuple[dict, pd.DataFrame]:
    """One adjacent pair: (the summary row, the per-feature match table) for L's kept features."""
    lm.check_comparable(W_a, W_b, "at the first layer", "at the next layer")
    kept_a = features_a[features_a["kept"]].sort_values("feature")
    kept_b = features_b[features_b["kept"]].set_index("feature")["cluster"]
    ids = kept_a["feature"].to_numpy(dtype=int)
    cos = lm.cosine_matrix(W_a[ids], W_b)
    top, top_cos = lm.top_k(cos, 1)
    null_cos = lm.top_k(lm.cosine_matrix(W_a[ids], W_b @ lm.random_rotation(W_b.shape[1], seed)), 1)[1]
    rows, cols, assigned = lm.assign_cosine(cos)
    partner = np.full(len(ids), -1)
    partner_cos = np.full(len(ids), np.nan)
    partner[rows], partner_cos[rows] = cols, assigned
    matches = pd.DataFrame({"feature_a": ids, "cluster_a": kept_a["cluster"].to_numpy(),
                            "top1_feature_b": top[:, 0], "top1_cosine": top_cos[:, 0],
                            "feature_b": partner, "cosine": partner_cos})
    matches["matched"] = matches["cosine"] >= min_cosine
    matches["cluster_b"] = matches["feature_b"].map(kept_b).astype("Int64")  # <NA>: not a kept feature at L'
    pairs = matches[matches["matched"] & matches["cluster_b"].notna()]
    n = max(len(ids), 1)
    row = {"n_kept_a": len(ids), "n_kept_b": len(kept_b), "min_cosine": min_cosine,
           "frac_top1": float((top_cos[:, 0] >= min_cosine).sum() / n),
           "frac_top1_null": float((null_cos[:, 0] >= min_cosine).sum() / n),
           "mean_top1_cosine": float(top_cos.mean()) if len(ids) else float("nan"),
           "frac_assigned": float(matches["matched"].sum() / n), "n_pairs": len(pairs),
           "ami": float(adjusted_mutual_info_score(pairs["cluster_a"], pairs["cluster_b"].astype(int)))
           if len(pairs) >= 2 else float("nan")}
    return row, matches


def flow_counts(matches: pd.DataFrame) -> pd.DataFrame:
    """Matched features from each kept cluster at L (rows) to each kept cluster at L' (columns)."""
    pairs = matches[matches["matched"] & matches["cluster_b"].notna()]
    return pd.crosstab(pairs["cluster_a"], pairs["cluster_b"].astype(int)).rename_axis(index="cluster_a", columns="cluster_b")


def outside_counts(matches: pd.DataFrame) -> pd.Series:
    """Matched features from each kept cluster at L whose partner at L' is not a kept feature of L's network."""
    return matches[matches["matched"] & matches["cluster_b"].isna()]["cluster_a"].value_counts().sort_index()


def load_decoder(cfg) -> np.ndarray:
    """The decoder [d_sae, d_model] of the SAE a run used (norms folded as the run did), without its model."""
    from featsweep.subjects.loading import fold_decoder_norms, load_sae

    if ModelSource(cfg.model.source) is ModelSource.organism:
        from featsweep.subjects.organism.load import load_organism

        try:
            _, sae, _ = load_organism(cfg.model.assets_dir, layer=cfg.sae.layer)
        except (FileNotFoundError, LookupError) as err:
            raise FeatsweepError(str(err)) from None
    else:
        sae = load_sae(cfg.sae, cfg.model, "cpu", torch.float32, cfg.seed)[0]
    fold_decoder_norms(sae)
    return sae.W_dec.detach().float().cpu().numpy()


def _run_inputs(client, run_id: str, folder: Path) -> tuple[pd.DataFrame, object]:
    """A run's network features and logged config."""
    local = Path(client.download_artifacts(run_id, "config/config.yaml", str(folder)))
    cfg = OmegaConf.load(local)
    try:
        features = pd.read_parquet(client.download_artifacts(run_id, FEATURES, str(folder)))
    except (MlflowException, OSError):
        raise FeatsweepError(f"run {run_id} (sae.layer={cfg.sae.layer}) has no {FEATURES}: cross-layer matching needs "
                             "the network stage (stages=[task,attribution,network,...]).") from None
    return features, cfg


def settings_besides_layer(table: pd.DataFrame, dims: list[str]) -> list[str]:
    """The swept dimensions other than ``sae.layer`` that vary on their own. A config value interpolated from
    ``sae.layer`` (SmolLM2's ``sae.path``, a registry SAE's ``sae_id``, any ``sae.hook_name``) takes one value per
    layer and a different one at each: it names the layer again and is not a setting to group by."""
    n_layers = table[LAYER].nunique(dropna=False)

    def follows_layer(dim: str) -> bool:
        return bool((table.groupby(LAYER, dropna=False)[dim].nunique(dropna=False) == 1).all()
                    and table[dim].nunique(dropna=False) == n_layers)

    return [d for d in dims if d != LAYER and not follows_layer(d)]


def layer_flow(client, table: pd.DataFrame, dims: list[str], out_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every adjacent-layer pair of the sweep (within each setting of the other swept dimensions): the summary
    rows (also ``layers/layer_pairs.csv``) and the flow figures written under ``out_dir``."""
    others = settings_besides_layer(table, dims)
    groups = table.groupby(others, sort=True, dropna=False) if others else [((), table)]
    rows, figures = [], []
    (out_dir / "layers").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for key, group in groups:
            group = group.sort_values(LAYER)
            if group[LAYER].nunique() < 2:  # one layer in this setting: nothing to match
                continue
            label = ", ".join(f"{d}={v}" for d, v in zip(others, key if isinstance(key, tuple) else (key,)))
            inputs = {int(r[LAYER]): _run_inputs(client, r["run_id"], Path(tmp) / r["run_id"]) for _, r in group.iterrows()}
            models = {str(cfg.model.name) for _, cfg in inputs.values()}
            if len(models) > 1:
                raise FeatsweepError(f"the runs use different models ({', '.join(sorted(models))}): SAEs of different "
                                     "models cannot be matched.")
            layers = sorted(inputs)
            decoders = {layer: load_decoder(inputs[layer][1]) for layer in layers}
            flows, sizes, outside = {}, {}, {}
            for layer in layers:
                kept = inputs[layer][0][inputs[layer][0]["kept"]]
                sizes[layer] = kept["cluster"].value_counts().sort_index().to_dict()
            for a, b in zip(layers, layers[1:]):
                row, matches = match_layers(inputs[a][0], decoders[a], inputs[b][0], decoders[b])
                rows.append({"setting": label, "layer_a": a, "layer_b": b, **row})
                suffix = f"_{len(figures)}" if others else ""
                matches.to_csv(out_dir / "layers" / f"matches_L{a}_L{b}{suffix}.csv", index=False)
                flows[(a, b)] = flow_counts(matches)
                outside[(a, b)] = outside_counts(matches)
            figure = plot_layer_flow(layers, sizes, flows, outside, title=f"kept clusters across layers{' (' + label + ')' if label else ''}"
                                     f": bands = features matched one-to-one at decoder cosine >= {MIN_COSINE}")
            name = f"layer_flow{'_' + str(len(figures)) if others else ''}.png"
            figure.savefig(out_dir / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            figures.append(name)
    summary = pd.DataFrame(rows)
    summary.to_csv(out_dir / "layers" / "layer_pairs.csv", index=False)
    return summary, figures


def layer_section(client, table: pd.DataFrame, dims: list[str], out_dir: Path, overrides: str = "") -> str:
    """The HTML section for ``compare/report.html``: empty unless ``sae.layer`` was swept (or set in the sweep's
    ``overrides``); a one-line note instead when there is nothing to match or the runs cannot be matched."""
    if LAYER not in dims:
        if any(o.split("=", 1)[0].lstrip("+~") == LAYER for o in overrides.split()):
            return _note("the sweep has one layer: there is nothing to match; sweep two or more "
                         "(sae.layer=0,1,2,3 on the organism, sae.layer=6,12,18 on SmolLM2).")
        return ""
    try:
        summary, figures = layer_flow(client, table, dims, out_dir)
    except FeatsweepError as err:
        return _note(str(err))
    if summary.empty:
        return _note("no setting of the other swept dimensions has two layers: there is nothing to match.")
    from featsweep.reports.sweep_report import _table

    images = "".join(f'<img alt="cluster flow across layers" src="data:image/png;base64,'
                     f'{base64.b64encode((out_dir / f).read_bytes()).decode()}">' for f in figures)
    shown = summary.drop(columns=["setting"]) if not summary["setting"].astype(bool).any() else summary
    return f"""<h3>Features followed across layers</h3>
<p>For each pair of adjacent layers, the kept features of the first layer matched to the SAE of the next by the cosine
of their decoder rows (threshold {MIN_COSINE}): <code>frac_top1</code> have a best match at or above it
(<code>frac_top1_null</code>: against a randomly rotated decoder, chance); <code>frac_assigned</code> keep a one-to-one
partner (Hungarian assignment) at or above it; <code>n_pairs</code> of those partners are kept features of the next
layer, and <code>ami</code> is the adjusted mutual information of the two clusterings on them (1: clusters carried
over whole, 0: chance). Tables: <code>layers/layer_pairs.csv</code>, <code>layers/matches_L*_L*.csv</code>.</p>
{images}
{_table(shown)}"""


def _note(message: str) -> str:
    return f"<h3>Features followed across layers</h3>\n<p>Cross-layer matching: {html.escape(message)}</p>"
