"""Where the corpus stage's text comes from: documents, in a fixed order, streamed (never all in memory).

* ``offline`` (the default, no download; data card: ``docs/corpus.md``): for the model organism its own held-out
  text (``heldout.txt`` + ``generic.txt``, corpus sentences it was never trained on; its tokenizer knows no other
  words); for any other model the held-out text shipped beside a local SAE, if there is one (``heldout.txt`` in
  the folder above ``sae.path``: the rows of its training mix it never saw), then, for SmolLM2's shipped SAEs,
  their training mix itself (``featsweep.subjects.smollm2.card.training_documents``: Python's documentation and
  the synthetic athletes documents, half each, as GPT-2's SAEs are described on the text they were trained on;
  the task's features fire on its athlete facts), then Python's documentation
  (``pydoc_data.topics``, sorted by topic) and the docstrings of installed scientific packages
  (``DOC_PACKAGES``, files in sorted order, read with ``ast``: no package is imported), several million tokens.
* ``huggingface``: a dataset through ``datasets`` (``corpus=pile10k``); offline it fails naming the default.
* ``file``: ``corpus.path``, a ``.txt`` (one document), ``.jsonl`` or ``.csv`` (one document a row, the text in
  ``corpus.text_column``) or a folder of them (sorted, recursively).

Every document read is hashed (``Documents.digest``), so a run records exactly which text it read.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from featsweep.config import CorpusConfig, CorpusSource, ModelSource, SaeSource
from featsweep.errors import FeatsweepError
from featsweep.subjects.organism import ASSETS_DIR

# Packages whose docstrings extend Python's own documentation, in this order (those installed; BSD/PSF licences).
DOC_PACKAGES = ["numpy", "scipy", "pandas", "networkx", "matplotlib", "sklearn", "torch"]
FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
OFFLINE_HINT = "drop the corpus= override for the offline default (corpus=offline), or give corpus.path=FILE_OR_DIR"


class Documents:
    """An iterable of document texts that hashes what it hands out (SHA-256 of each text + a NUL)."""

    def __init__(self, source: Iterable[str], description: str):
        self._source = source
        self.description = description
        self._sha = hashlib.sha256()
        self.n_documents = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._source:
            if not text or not text.strip():
                continue
            self._sha.update(text.encode("utf-8") + b"\0")
            self.n_documents += 1
            yield text

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()[:16]


def sae_heldout(sae_cfg) -> Optional[Path]:
    """The held-out text shipped beside a local SAE's folder (one JSON string a line), if any."""
    if sae_cfg is None or SaeSource(sae_cfg.source) is not SaeSource.local or not sae_cfg.path:
        return None
    path = Path(sae_cfg.path).parent / "heldout.txt"
    return path if path.is_file() else None


def corpus_documents(cfg: CorpusConfig, model_cfg, organism_assets: Optional[Path] = None, sae_cfg=None) -> Documents:
    """The documents of the configured corpus (``organism_assets``: the organism's asset folder; ``sae_cfg``: for
    the held-out text a local SAE ships)."""
    if cfg.path:
        return Documents(_file_documents(Path(cfg.path), cfg.text_column), f"file:{cfg.path}")
    source = CorpusSource(cfg.source)
    if source is CorpusSource.huggingface:
        return Documents(_hf_documents(cfg), f"huggingface:{cfg.dataset}:{cfg.split}")
    if source is CorpusSource.file:
        raise FeatsweepError("corpus.source=file needs corpus.path=FILE_OR_DIR (.txt, .jsonl or .csv).")
    if ModelSource(model_cfg.source) is ModelSource.organism:
        assets = organism_assets or Path(model_cfg.assets_dir or ASSETS_DIR)
        return Documents(_organism_documents(assets), "offline:organism-heldout")
    heldout = sae_heldout(sae_cfg)
    if heldout is not None and _smollm2_sae(heldout):
        return Documents(_heldout_then_python(heldout, smollm2_mix=True),
                         "offline:sae-heldout+sae-training-mix+pydoc+docstrings")
    if heldout is not None:
        return Documents(_heldout_then_python(heldout), "offline:sae-heldout+pydoc+docstrings")
    return Documents(_python_documents(), "offline:pydoc+docstrings")


def _smollm2_sae(heldout: Path) -> bool:
    """Whether ``heldout`` is the one SmolLM2's shipped SAEs share (their training mix can then be rebuilt)."""
    from featsweep.subjects.smollm2.card import HELDOUT_FILE

    return heldout.resolve() == HELDOUT_FILE.resolve()


def corpus_fingerprint(cfg: CorpusConfig, model_cfg, organism_assets: Path, sae_cfg=None) -> list:
    """What the text depends on beyond the config, for the stage's cache key (cheap: no file is read).
    Files: their paths, sizes and modification times; the offline Python text: the versions it is read from."""
    if cfg.path:
        root = Path(cfg.path)
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    if CorpusSource(cfg.source) is CorpusSource.huggingface:
        return [cfg.dataset, cfg.split]
    if ModelSource(model_cfg.source) is ModelSource.organism:
        return [(n, (organism_assets / n).stat().st_size) for n in ("heldout.txt", "generic.txt")]
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version("scikit-learn" if name == "sklearn" else name)
        except PackageNotFoundError:
            return "-"
    heldout = sae_heldout(sae_cfg)
    shipped = [(str(heldout), heldout.stat().st_size)] if heldout is not None else []
    if heldout is not None and _smollm2_sae(heldout):  # the mix is rebuilt by code: its source files count
        from featsweep.subjects.organism import corpus
        from featsweep.subjects.smollm2 import card

        shipped.append(hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (card, corpus))).hexdigest()[:16])
    return [*shipped, sys.version.split()[0], *[(p, installed(p)) for p in DOC_PACKAGES]]


def _organism_documents(assets: Path) -> Iterator[str]:
    for name in ("heldout.txt", "generic.txt"):
        yield from (line.strip() for line in (assets / name).read_text().splitlines())


def _heldout_then_python(heldout: Path, smollm2_mix: bool = False) -> Iterator[str]:
    yield from (json.loads(line) for line in heldout.read_text().splitlines() if line.strip())
    if smollm2_mix:
        from featsweep.subjects.smollm2.card import training_documents

        yield from training_documents()
    yield from _python_documents()


def _python_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    for package in DOC_PACKAGES:
        spec = importlib.util.find_spec(package) if package not in sys.modules else sys.modules[package].__spec__
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in sorted(spec.submodule_search_locations):
            for path in sorted(Path(root).rglob("*.py")):
                yield from _docstrings(path)


def _docstrings(path: Path) -> Iterator[str]:
    """The module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                yield doc


def _hf_documents(cfg: CorpusConfig) -> Iterator[str]:
    try:
        import datasets
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        data = datasets.load_dataset(cfg.dataset, split=cfg.split)
    except FeatsweepError:
        raise
    except Exception as err:  # offline, not cached, unknown name: all one message
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise FeatsweepError(f"corpus={cfg.name}: the dataset {cfg.dataset} could not be loaded ({first}); offline, "
                             f"{OFFLINE_HINT}.") from None
    if cfg.text_column not in data.column_names:
        raise FeatsweepError(f"corpus.text_column='{cfg.text_column}' is not a column of {cfg.dataset} (columns: "
                             f"{', '.join(data.column_names)}); set corpus.text_column to one of them.")
    for row in data:
        yield str(row[cfg.text_column] or "")


def _file_documents(path: Path, column: str) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise FeatsweepError(f"corpus.path={path} holds no .txt, .jsonl or .csv file; point it at one or at a "
                                 "folder of them.")
    elif path.is_file():
        files = [path]
    else:
        raise FeatsweepError(f"corpus.path={path} does not exist; give a .txt, .jsonl or .csv file or a folder.")
    for file in files:
        yield from _read_file(file, column)


def _read_file(path: Path, column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise FeatsweepError(f"corpus.path={path}: unknown file type '{suffix}'; use .txt, .jsonl or .csv.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FeatsweepError(f"corpus.path={path} is not UTF-8 text (byte {err.start}); convert it, e.g. "
                             f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{suffix}`.") from None
    if not text.strip():
        raise FeatsweepError(f"corpus.path={path} is empty; give a file with text in it.")
    if suffix == ".txt":
        yield text
        return
    rows: Iterable[dict]
    if suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise FeatsweepError(f"corpus.path={path} line {err.lineno} is not JSON; one JSON object a line.") from None
        if rows and not isinstance(rows[0], dict):
            raise FeatsweepError(f"corpus.path={path}: each line must be a JSON object with a '{column}' field.")
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    columns = list(rows[0]) if rows else []
    if column not in columns:
        raise FeatsweepError(f"corpus.text_column='{column}' is not a column of {path} (columns: "
                             f"{', '.join(map(str, columns)) or 'none'}); set corpus.text_column to one of them.")
    for row in rows:
        yield str(row.get(column) or "")
