"""The sweep's one page (``compare/report.html``) and the messages that end a run or a multirun.

The page is self-contained (the figure is embedded), because MLflow's artifact view shows an HTML
artifact in a sandboxed frame where links to sibling files do not load.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from featsweep.hypotheses import verdicts
from featsweep.tracking.store import URI_ENV, mask

UI_PORT = 5000

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f3f3f3} img{max-width:100%}
.low{background:#e6f4e6;font-weight:bold} code{background:#f5f5f5;padding:1px 3px}"""

READING = ("<p>How to read it: each run tags every hypothesis <code>supported</code>, <code>not_supported</code> or "
           "<code>inconclusive</code> (the <code>h1/h2/h3.verdict</code> columns; the reason is the run's "
           "<code>h&lt;k&gt;.verdict_reason</code> tag) by these rules, quoted from <code>featsweep/hypotheses/verdicts.py</code>. "
           "P-values corrected across the runs of the sweep are in <code>summary_full.csv</code> "
           "(<code>*.sweep_adj</code>). Every metric name is explained in the glossary, <code>docs/metrics.md</code>.</p>")


def verdict_rules_html() -> str:
    """The verdict module's docstring (the one written-down source of the rules) as HTML paragraphs and a list."""
    blocks, current = [], []
    for line in (verdicts.__doc__ or "").strip().splitlines():
        line = line.strip()
        if line.startswith("* ") or not line:  # a bullet or a blank line starts a new block
            if current:
                blocks.append(current)
            current = [line] if line else []
        else:
            current.append(line)
    if current:
        blocks.append(current)

    def inline(text: str) -> str:
        text = re.sub(r"``(.+?)``", r"<code>\1</code>", html.escape(text, quote=False))
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)

    out, items = [], []
    for block in blocks:
        text = inline(" ".join(block))
        if block[0].startswith("* "):
            items.append(f"<li>{text[2:]}</li>")
        else:
            if items:
                out.append(f"<ul>{''.join(items)}</ul>")
                items = []
            out.append(f"<p>{text}</p>")
    if items:
        out.append(f"<ul>{''.join(items)}</ul>")
    out.append(f"<p><code>ALPHA</code> = {verdicts.ALPHA}, <code>MIN_BOOTSTRAP_ARI</code> = {verdicts.MIN_BOOTSTRAP_ARI}.</p>")
    return "\n".join(out)


def ui_command(uri: str, port: int = UI_PORT) -> str:
    """The exact command that opens the MLflow UI on this store, with the mlflow of this environment; a URI with
    a password is shown masked (or as the environment variable it came from)."""
    local = Path(sys.executable).parent / "mlflow"
    program = str(local) if local.exists() else f"{sys.executable} -m mlflow"
    if uri.startswith(("http://", "https://")):
        return f"open {mask(uri)} in a browser"
    if mask(uri) != uri:
        if os.environ.get(URI_ENV) == uri:
            return f'{program} ui --backend-store-uri "${URI_ENV}" --port {port}'
        return f"{program} ui --backend-store-uri {shlex.quote(mask(uri))} --port {port}   (your password for ***)"
    return f"{program} ui --backend-store-uri {shlex.quote(uri)} --port {port}"


def run_url(experiment_id: str, run_id: str, port: int = UI_PORT) -> str:
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs/{run_id}"


def runs_url(experiment_id: str, port: int = UI_PORT) -> str:
    return f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"


MODEL_TRAINING_HINT = 'If the UI opens on a GenAI overview ("Traces"), pick "Model training" to see the runs.'


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def report_link(artifact_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run's report.html opens: the file in a local artifact store, else the run's page in the UI."""
    if artifact_uri.startswith("file://"):
        return f"{artifact_uri}/report.html"
    if artifact_uri.startswith("/"):
        return f"file://{artifact_uri}/report.html"
    return run_url(experiment_id, run_id)


def _table(summary: pd.DataFrame, links: Optional[dict] = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in summary.columns)
    rows = []
    for _, row in summary.iterrows():
        cells = []
        for column, value in row.items():
            last = column.rsplit(".", 1)[-1]
            is_p = last in ("p", "p_adj", "p_partial") or last.endswith("_p")
            low = is_p and isinstance(value, float) and value < 0.05
            if column == "run_id" and links and value in links:  # each run's own report.html
                cells.append(f"<td><a href='{html.escape(links[value])}'>{_cell(value)}</a></td>")
                continue
            cells.append(f"<td class='low'>{_cell(value)}</td>" if low else f"<td>{_cell(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def render_report(summary: pd.DataFrame, dims: list[str], constant: dict, figure: Path, title: str = "",
                  links: Optional[dict] = None, extra: str = "") -> str:
    """The whole page: what was swept, the figure, the headline table, what did not change, and ``extra``
    (HTML sections such as the cross-layer flow of an sae.layer sweep)."""
    image = base64.b64encode(Path(figure).read_bytes()).decode()
    fixed = "".join(f"<li><code>{html.escape(k)}</code> = {_cell(v)}</li>" for k, v in constant.items())
    swept = ", ".join(f"<code>{html.escape(d)}</code>" for d in dims) or "nothing (the runs share every parameter)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>featsweep: {html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h2>featsweep: {html.escape(title)}</h2>
<p>{len(summary)} finished runs; swept: {swept}. Each row of the table is one run (its run_id opens the run's report.html); p-values below 0.05 are marked.</p>
{READING}
{verdict_rules_html()}
<img alt="H1-H3 against the swept dimensions" src="data:image/png;base64,{image}">
<h3>Headline metrics (summary.csv)</h3>
{_table(summary, links)}
<h3>Did not vary across the sweep</h3>
<ul>{fixed or "<li>(none)</li>"}</ul>
{extra}
</body></html>
"""


def run_finished_message(run_id: str, uri: str, experiment_id: Optional[str] = None) -> str:
    """The end of a single run: its id, where to look, and how to open the UI."""
    lines = [f"Run {run_id} is in {mask(uri)}.", f"Open the UI: {ui_command(uri)}"]
    if experiment_id:
        lines += [f"then the runs: {runs_url(experiment_id)}", f"this run: {run_url(experiment_id, run_id)}"]
    lines.append(MODEL_TRAINING_HINT)
    return "\n".join(lines)


def sweep_finished_message(client, parent: str, uri: str) -> str:
    """The end of a multirun: the parent id, where the summary is, and how to open the UI."""
    run = client.get_run(parent)
    folder = Path(run.data.tags.get("featsweep.sweep_dir", ".")) / "compare"
    lines = [f"Sweep '{run.info.run_name}' ({run.data.tags.get('featsweep.compare.n_runs', '0')} runs): parent run {parent}."]
    if (folder / "summary.csv").exists():
        lines.append(f"Summary: {folder / 'summary.csv'}; one page: {folder / 'report.html'} (also under the parent run's compare/).")
    lines += [f"Open the UI: {ui_command(uri)}", f"then the runs: {runs_url(run.info.experiment_id)}",
              f"this sweep's parent run: {run_url(run.info.experiment_id, parent)}", MODEL_TRAINING_HINT,
              "Or in a terminal: python -m featsweep.reports.compare (from the folder that holds mlflow.db)."]
    return "\n".join(lines)
