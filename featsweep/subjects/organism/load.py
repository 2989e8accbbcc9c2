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
SAE_DIR = "sae"  # one SAE per residual-stream layer: sae/layer_<L>/ reads blocks.<L>.hook_resid_pre
CARD = "model_card.json"
GENERIC = "generic.txt"
HELDOUT = "heldout.txt"
CORPUS_META = "corpus_meta.json"

BOS = "<|endoftext|>"
PAD = "<|pad|>"
DEFAULT_LAYER = 3  # the layer the default run studies when the card names none (conf/sae/organism.yaml sets sae.layer)
DEFAULT_HOOK = f"blocks.{DEFAULT_LAYER}.hook_resid_pre"

_RETRAIN = "python -m featsweep.subjects.organism.train"


def hook_for(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def sae_dir(layer: int) -> str:
    """The SAE directory (relative to the assets) for the residual stream before block ``layer``."""
    return f"{SAE_DIR}/layer_{layer}"


def available_layers(assets_dir: str | Path | None = None) -> list[int]:
    """The layers with a shipped (or trained) SAE, ascending."""
    root = (Path(assets_dir) if assets_dir is not None else ASSETS_DIR) / SAE_DIR
    found = []
    for cfg in root.glob("layer_*/cfg.json"):
        suffix = cfg.parent.name.removeprefix("layer_")
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def default_layer(assets_dir: str | Path | None = None) -> int:
    """The card's default layer (the one the default run studies)."""
    card = (Path(assets_dir) if assets_dir is not None else ASSETS_DIR) / CARD
    if card.exists():
        return int(json.loads(card.read_text()).get("default_layer", DEFAULT_LAYER))
    return DEFAULT_LAYER


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


def load_organism_model(assets: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The organism's ``HookedTransformer`` (with its tokenizer) from ``assets``, in eval mode."""
    from safetensors.torch import load_file

    _require(assets, [MODEL_WEIGHTS, MODEL_CONFIG, TOKENIZER])
    cfg_kwargs = json.loads((assets / MODEL_CONFIG).read_text())
    tok = load_tokenizer(assets / TOKENIZER)
    model = build_model(cfg_kwargs, tokenizer=tok, device=device, dtype=dtype)
    state = load_file(str(assets / MODEL_WEIGHTS))
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model.to(device)
    model.eval()
    return model


def load_organism(
    assets_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    layer: int | None = None,
):
    """Load the organism's model, the SAE at ``layer`` (default: the card's default layer) and the card.

    Returns ``(model, sae, card)`` where ``model`` is a TransformerLens
    ``HookedTransformer``, ``sae`` an inference ``sae_lens.SAE`` and ``card``
    the parsed ``model_card.json`` (``{}`` if absent) with ``hook_name`` and
    ``layer`` set to the loaded SAE's. Raises ``FileNotFoundError`` naming the
    retraining command when the assets are missing, and ``LookupError`` listing
    the layers that have an SAE when ``layer`` has none.
    """
    from sae_lens import SAE

    assets = Path(assets_dir) if assets_dir is not None else ASSETS_DIR
    if not assets.is_dir():
        raise FileNotFoundError(
            f"Model organism assets directory {assets} does not exist. Build it with `{_RETRAIN} --out {assets}`."
        )
    _require(assets, [MODEL_WEIGHTS, MODEL_CONFIG, TOKENIZER])
    layers = available_layers(assets)
    if not layers:
        raise FileNotFoundError(
            f"Model organism assets in {assets} hold no SAE ({SAE_DIR}/layer_<L>/cfg.json). "
            f"Rebuild them with `{_RETRAIN}` (or `{_RETRAIN} --out {assets}`)."
        )
    layer = default_layer(assets) if layer is None else int(layer)
    if layer not in layers:
        raise LookupError(f"The model organism has no SAE at layer {layer}; sae.layer can be one of: "
                          f"{', '.join(map(str, layers))}.")

    model = load_organism_model(assets, device=device, dtype=dtype)

    with warnings.catch_warnings():  # the organism is a plain HookedTransformer; SAE Lens's hint does not apply
        warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        sae = SAE.load_from_disk(str(assets / sae_dir(layer)), device=device, dtype=str(dtype).replace("torch.", ""))
    sae.eval()

    card: dict[str, Any] = {}
    if (assets / CARD).exists():
        card = json.loads((assets / CARD).read_text())
    card["hook_name"] = sae.cfg.metadata.hook_name or hook_for(layer)
    card["layer"] = layer
    card["assets_dir"] = str(assets)
    return model, sae, card
