"""Loading the organism: the one code path for shipped and freshly trained assets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer.json"
SAE_DIR = "sae"
CARD = "model_card.json"
GENERIC = "generic.txt"
HELDOUT = "heldout.txt"
CORPUS_META = "corpus_meta.json"

BOS = "<|endoftext|>"
PAD = "<|pad|>"
DEFAULT_HOOK = "blocks.2.hook_resid_pre"

_RETRAIN = "python -m featsweep.organism.train"


def load_tokenizer(path: str | Path):
    """The organism's BPE tokenizer as a ``PreTrainedTokenizerFast`` (BOS = EOS = <|endoftext|>, PAD = <|pad|>)."""
    from transformers import PreTrainedTokenizerFast

    # add_bos_token + a local name_or_path: TransformerLens then uses this tokenizer as is
    # (it would otherwise re-load it by name from a hub) and `to_tokens` starts with BOS.
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path), bos_token=BOS, eos_token=BOS, pad_token=PAD,
        add_bos_token=True, name_or_path=str(Path(path).parent),
    )
    return tok


def build_model(cfg_kwargs: dict[str, Any], tokenizer=None, device: str = "cpu", dtype=torch.float32):
    """A fresh HookedTransformer of the organism's shape."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**cfg_kwargs, "device": device, "dtype": dtype})
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    return model


def _require(assets: Path, names: list[str]) -> None:
    missing = [n for n in names if not (assets / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"Model organism assets missing in {assets}: {', '.join(missing)}. "
            f"Rebuild them with `{_RETRAIN}` (or `{_RETRAIN} --out {assets}`)."
        )


def load_organism(
    assets_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load the organism's model, SAE and card.

    Returns ``(model, sae, card)`` where ``model`` is a TransformerLens
    ``HookedTransformer``, ``sae`` an inference ``sae_lens.SAE`` and ``card``
    the parsed ``model_card.json`` (``{}`` if absent) with ``hook_name`` set.
    Raises ``FileNotFoundError`` naming the retraining command when the assets
    are missing.
    """
    from safetensors.torch import load_file
    from sae_lens import SAE

    assets = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    if not assets.is_dir():
        raise FileNotFoundError(
            f"Model organism assets directory {assets} does not exist. Build it with `{_RETRAIN} --out {assets}`."
        )
    _require(assets, [MODEL_WEIGHTS, MODEL_CONFIG, TOKENIZER, f"{SAE_DIR}/cfg.json"])

    cfg_kwargs = json.loads((assets / MODEL_CONFIG).read_text())
    tok = load_tokenizer(assets / TOKENIZER)
    model = build_model(cfg_kwargs, tokenizer=tok, device=device, dtype=dtype)
    state = load_file(str(assets / MODEL_WEIGHTS))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model.to(device)
    model.eval()

    with warnings.catch_warnings():  # the organism is a plain HookedTransformer; SAE Lens's hint does not apply
        warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        sae = SAE.load_from_disk(str(assets / SAE_DIR), device=device, dtype=str(dtype).replace("torch.", ""))
    sae.eval()

    card: dict[str, Any] = {}
    if (assets / CARD).exists():
        card = json.loads((assets / CARD).read_text())
    card["hook_name"] = card.get("hook_name") or sae.cfg.metadata.hook_name or DEFAULT_HOOK
    card["assets_dir"] = str(assets)
    return model, sae, card
