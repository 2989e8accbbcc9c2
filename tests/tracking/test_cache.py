"""The content-addressed stage cache: keys, integrity, atomic writes."""

from __future__ import annotations

import importlib
import pickle
import sys

import pytest

from featsweep.tracking import cache as cache_module
from featsweep.tracking.cache import StageCache, cache_key, code_digest
from featsweep.errors import FeatsweepError


def test_cache_detects_a_corrupt_entry_and_recomputes(tmp_path):
    cache = StageCache(tmp_path / "c")
    key = cache_key("stage", a=1)
    assert cache.get_or_compute("stage", key, lambda: {"x": 1}) == {"x": 1} and cache.status["stage"] == "miss"
    assert cache.get_or_compute("stage", key, lambda: {"x": 2}) == {"x": 1} and cache.status["stage"] == "hit"
    path = tmp_path / "c" / "stage" / f"{key}.pkl"
    path.write_bytes(path.read_bytes()[:-5])  # a partial write
    assert cache.get_or_compute("stage", key, lambda: {"x": 3}) == {"x": 3} and cache.status["stage"] == "miss"
    raw = path.read_bytes()
    path.write_bytes(raw[:65] + pickle.dumps({"x": 666}))  # a payload that does not match its checksum
    assert cache.load("stage", key) is None
    assert not list((tmp_path / "c" / "stage").glob(".tmp-*"))  # no temp files left behind


def test_disabled_cache_always_computes(tmp_path):
    cache = StageCache(tmp_path / "off", enabled=False)
    key = cache_key("stage", a=1)
    assert cache.get_or_compute("stage", key, lambda: 1) == 1 and cache.status["stage"] == "off"
    assert cache.get_or_compute("stage", key, lambda: 2) == 2  # nothing was stored
    assert not (tmp_path / "off").exists()


def test_a_whole_stage_result_round_trips(tmp_path):
    from featsweep.results import StageResult

    cache = StageCache(tmp_path / "c")
    value = ({"matrix": [1, 2]}, StageResult(metrics={"m": 1.5}, files={"network/graph.graphml": b"<xml/>"},
                                              tags={"t": "v"}, skip_reason="why"))
    cache.save("network", "k", value)
    out, result = cache.load("network", "k")
    assert out == {"matrix": [1, 2]} and result.files == {"network/graph.graphml": b"<xml/>"}
    assert result.metrics == {"m": 1.5} and result.skip_reason == "why"


def test_cache_keys_depend_on_exactly_their_inputs():
    assert cache_key("attribution", task="t", attribution={"a": 1}) == cache_key("attribution", attribution={"a": 1}, task="t")
    assert cache_key("attribution", task="t", attribution={"a": 1}) != cache_key("attribution", task="t", attribution={"a": 2})
    assert cache_key("network", x=1) != cache_key("attribution", x=1)


def test_unwritable_cache_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FeatsweepError, match="cache.dir"):
        StageCache(blocker / "cache")


def test_the_code_digest_follows_the_modules_a_stage_uses(tmp_path, monkeypatch):
    package = tmp_path / "stagepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stage.py").write_text("from stagepkg import helper\n\ndef run():\n    return helper.value()\n")
    (package / "helper.py").write_text("def value():\n    return 1\n")
    (package / "other.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = importlib.import_module("stagepkg.stage")
    importlib.import_module("stagepkg.other")
    try:
        before = code_digest(stage.run)
        (package / "other.py").write_text("X = 2\n")  # a module the stage does not use
        assert code_digest(stage.run) == before
        (package / "helper.py").write_text("def value():\n    return 2\n")  # one it uses through an import
        changed = code_digest(stage.run)
        assert changed != before
        assert cache_key("s", code=stage.run, a=1) != cache_key("s", a=1)
        monkeypatch.setattr(cache_module, "__version__", "999.0")  # an upgrade changes every code-keyed entry
        assert cache_key("s", code=stage.run, a=1) != cache_key("s", code=stage.run, a=2)
        upgraded = cache_key("s", code=stage.run, a=1)
        monkeypatch.undo()
        monkeypatch.syspath_prepend(str(tmp_path))
        assert cache_key("s", code=stage.run, a=1) != upgraded
    finally:
        for name in [n for n in sys.modules if n.startswith("stagepkg")]:
            del sys.modules[name]
