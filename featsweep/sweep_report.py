"""The sweep's one page (``compare/report.html``) and the messages that end a run or a multirun.

The page is self-contained (the figure is embedded), because MLflow's artifact view shows an HTML
artifact in a sandboxed frame where links to sibling files do not load.
"""

from __future__ import annotations

import base64
import html
import shlex
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

UI_PORT = 5000

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f3f3f3} img{max-width:100%}
.low{background:#e6f4e6;font-weight:bold} code{background:#f5f5f5;padding:1px 3px}"""

READING = """<p>How to read it: <b>H1</b> (clusters are distinct) is supported when the edges beat the permutation null
(<code>h1.edges_z</code> &gt; 2), the modularity beats the edge-matched null (<code>h1.matched_modularity_z</code> &gt; 2)
and the clusters are stable under bootstrap (<code>h1.bootstrap_ari_mean</code> near 1). <b>H2</b> (a set from one cluster
hurts more than a set spread across clusters) is supported when <code>h2.p</code> &lt; 0.05 with a negative
<code>h2.effect_size</code>. <b>H3</b> (centrality predicts importance) is supported where an <code>h3.*.p_adj</code>
&lt; 0.05. P-values corrected across the runs of the sweep are in <code>summary_full.csv</code> (<code>*.sweep_adj</code>).
Every metric name is explained in the glossary, <code>docs/metrics.md</code>.</p>"""


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The exact command that opens the MLflow UI on this store, with the mlflow of this environment."""
    local = Path(sys.executable).parent / "mlflow"
    program = str(local) if local.exists() else f"{sys.executable} -m mlflow"
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"{program} ui --backend-store-uri {shlex.quote(uri)} --port {port}"


def run_url(experiment_id: str, run_id: str, port: int = UI_PORT) -> str:
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs/{run_id}"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(summary: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in summary.columns)
    rows = []
    for _, row in summary.iterrows():
        cells = []
        for column, value in row.items():
            last = column.rsplit(".", 1)[-1]
            is_p = last in ("p", "p_adj", "p_partial") or last.endswith("_p")
            low = is_p and isinstance(value, float) and value < 0.05
            cells.append(f"<td class='low'>{_cell(value)}</td>" if low else f"<td>{_cell(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_report(summary: pd.DataFrame, dims: list[str], constant: dict, figure: Path, title: str = "",
                  extra: str = "") -> str:
    """The whole page: what was swept, the figure, the headline table, what did not change, and ``extra``
    (HTML sections such as the cross-layer flow of an sae.layer sweep)."""
    image = base64.b64encode(Path(figure).read_bytes()).decode()
    fixed = "".join(f"<li><code>{html.escape(k)}</code> = {_cell(v)}</li>" for k, v in constant.items())
    swept = ", ".join(f"<code>{html.escape(d)}</code>" for d in dims) or "nothing (the runs share every parameter)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>featsweep: {html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h2>featsweep: {html.escape(title)}</h2>
<p>{len(summary)} finished runs; swept: {swept}. Each row of the table is one run; p-values below 0.05 are marked.</p>
{READING}
<img alt="H1-H3 against the swept dimensions" src="data:image/png;base64,{image}">
<h3>Headline metrics (summary.csv)</h3>
{_table(summary)}
<h3>Did not vary across the sweep</h3>
<ul>{fixed or "<li>(none)</li>"}</ul>
{extra}
</body></html>
"""


def run_finished_message(run_id: str, uri: str, experiment_id: Optional[str] = None) -> str:
    """The end of a single run: its id, where to look, and how to open the UI."""
    lines = [f"Run {run_id} is in {uri}.", f"Open the UI: {ui_command(uri)}"]
    if experiment_id:
        lines.append(f"then: {run_url(experiment_id, run_id)}")
    return "\n".join(lines)


def sweep_finished_message(client, parent: str, uri: str) -> str:
    """The end of a multirun: the parent id, where the summary is, and how to open the UI."""
    run = client.get_run(parent)
    folder = Path(run.data.tags.get("featsweep.sweep_dir", ".")) / "compare"
    lines = [f"Sweep '{run.info.run_name}' ({run.data.tags.get('featsweep.compare.n_runs', '0')} runs): parent run {parent}."]
    if (folder / "summary.csv").exists():
        lines.append(f"Summary: {folder / 'summary.csv'}; one page: {folder / 'report.html'} (also under the parent run's compare/).")
    lines += [f"Open the UI: {ui_command(uri)}", f"then: {run_url(run.info.experiment_id, parent)}",
              "Or in a terminal: python -m featsweep.compare (from the folder that holds mlflow.db)."]
    return "\n".join(lines)
