"""Every metric and tag a run logs is documented in docs/metrics.md: the test reads the glossary's patterns
and checks them against the names logged by a real default-settings run and a real multirun."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from featsweep.reports.compare import HEADLINE, VERDICTS
from helpers import REPO, run_featsweep

GLOSSARY = REPO / "docs" / "metrics.md"
QUICK_STATS = ["clustering.n_null=5", "clustering.n_bootstrap=3", "clustering.n_continuum=3", "steering.samples_per_size=4", "task.limit=40",
               # every stage, the optional cooccurrence stage too, so that every name a run can log is checked
               "stages=[task,attribution,network,cooccurrence,steering]", "cooccurrence.n_permutations=19",
               "cooccurrence.n_matched=19"]


def glossary_patterns() -> list[str]:
    """The first backticked cell of every table row of the glossary."""
    return re.findall(r"^\| `([^`]+)` \|", GLOSSARY.read_text(), flags=re.MULTILINE)


def to_regex(pattern: str) -> re.Pattern:
    """`<word>` is one dot-free segment; `<word*>` and `*` are anything."""
    out = ""
    for token in re.split(r"(<[^>]+>|\*)", pattern):
        if token == "*" or (token.startswith("<") and token.endswith("*>")):
            out += ".+"
        elif token.startswith("<"):
            out += "[^.]+"
        else:
            out += re.escape(token)
    return re.compile(out + r"\Z")


def uncovered(names: set[str]) -> list[str]:
    regexes = [to_regex(p) for p in glossary_patterns()]
    return sorted(n for n in names if not any(r.match(n) for r in regexes))


def test_the_glossary_matches_what_it_says_and_nothing_else():
    assert len(glossary_patterns()) > 80
    assert uncovered({"h3.degree.p", "h1.mean_abs.kruskal_p_adj", "sweep.h2.p.min", "h2.size3.p", "mlflow.runName"}) == []
    assert uncovered({"h3.degree.bogus", "h3.p", "task.accuracy2", "h2.size3.x.p"}) == ["h2.size3.x.p", "h3.degree.bogus", "h3.p", "task.accuracy2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store holding a run with the default settings (fewer null and bootstrap samples) and a multirun."""
    work = tmp_path_factory.mktemp("glossary")
    for args in ([*QUICK_STATS], ["-m", "steering.factor=1,10", "tracking.skip_finished=false", *QUICK_STATS]):
        proc = run_featsweep(work, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return MlflowClient(f"sqlite:///{work}/mlflow.db")


def test_every_logged_metric_and_tag_is_in_the_glossary(store):
    runs = store.search_runs([store.get_experiment_by_name("featsweep").experiment_id])
    assert len(runs) == 4  # the single run, the parent and its two jobs
    assert any(r.data.tags.get("featsweep.role") == "sweep" for r in runs)
    names = {name for r in runs for name in [*r.data.metrics, *r.data.tags]}
    assert {"h2.p", "h3.betweenness.p_partial", "h4.verdict", "cooc.n_pairs", "sweep.h2.p.min"} <= names  # every stage ran
    assert uncovered(names) == []
    parent_params = {k for r in runs if r.data.tags.get("featsweep.role") == "sweep" for k in r.data.params}
    assert uncovered(parent_params - {"steering.factor"}) == []


def test_every_headline_column_of_the_sweep_summary_is_logged_by_a_real_run(store):
    runs = store.search_runs([store.get_experiment_by_name("featsweep").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("featsweep.role") != "sweep"]
    for run in jobs:  # a headline name that no run logs would be a silently empty column of summary.csv
        assert [name for name in HEADLINE if name not in run.data.metrics] == []
        assert [name for name in VERDICTS if name not in run.data.tags] == []


def test_help_points_to_the_readme_and_the_glossary(tmp_path):
    proc = run_featsweep(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "README.md" in proc.stdout and "docs/metrics.md" in proc.stdout
    assert "featsweep -m steering.factor=1,10,30" in proc.stdout
