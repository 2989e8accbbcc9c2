"""The model and SAE under study: loading (organism, pretrained, random-of-shape) and fit checks."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import try_to_load_from_cache
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_official_model_name
from transformers import AutoTokenizer

from featsweep.config import Device, DType, ModelSource, SaeSource
from featsweep.errors import FeatsweepError
from featsweep.subjects.gguf import load_gguf_model
from featsweep.subjects.organism import ASSETS_DIR, load_organism, load_tokenizer

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"

# Shapes used by model.random_init when the hub config is not cached. These are
# GPT-2 small's published hyper-parameters; the cost of a forward pass is that of the real model.
KNOWN_SHAPES = {
    "gpt2-small": dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257,
        n_ctx=1024, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
    ),
}
KNOWN_SHAPES["gpt2"] = KNOWN_SHAPES["gpt2-small"]

OFFLINE_FIX = (
    "Run offline with the shipped model organism (the default: drop the model=/sae=/experiment= "
    "overrides), or add model.random_init=true sae.random_init=true for random weights of the same "
    "shape, or download the weights on a connected machine into the Hugging Face cache (HF_HOME)."
)


@dataclass
class Subject:
    """A model with its SAE spliced at ``hook_name`` (the residual stream before block ``layer``)."""

    model: HookedTransformer
    sae: SAE
    hook_name: str
    layer: int
    identity: str  # names the weights, for cache keys and run tags
    neuronpedia_id: Optional[str] = None  # e.g. "gpt2-small/7-res-jb"
    notes: dict[str, str] = field(default_factory=dict)  # tagged on the run

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.cfg.device)


def resolve_device(device: Device | str) -> str:
    device = Device(device)
    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.cuda and not torch.cuda.is_available():
        raise FeatsweepError("device=cuda was asked for but no CUDA GPU is visible; use device=auto or device=cpu.")
    return device.value


def torch_dtype(dtype: DType | str) -> torch.dtype:
    return getattr(torch, DType(dtype).value)


def hook_layer(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.hook_resid_pre$", hook_name)
    if not match:
        raise FeatsweepError(
            f"SAE hook '{hook_name}' is not supported: featsweep splices SAEs into the residual stream "
            "at 'blocks.<layer>.hook_resid_pre'. Choose an SAE trained on such a hook."
        )
    return int(match.group(1))


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_cached(repo_id: str, filename: str) -> bool:
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return isinstance(found, str)


def _require_weights(what: str, repo_id: str, filename: str) -> None:
    """Fail fast and clearly when weights are neither cached nor downloadable (no hanging retries)."""
    if _hf_cached(repo_id, filename) or hub_reachable():
        return
    raise FeatsweepError(f"{what} is not in the Hugging Face cache and {HUB_HOST} cannot be reached. {OFFLINE_FIX}")


def _organism_tokenizer():
    path = ASSETS_DIR / "tokenizer.json"
    if not path.exists():
        raise FeatsweepError(f"No tokenizer available offline: {path} is missing. Run `python -m featsweep.subjects.organism.train`.")
    return load_tokenizer(path)


def _random_model(name: str, device: str, dtype: torch.dtype, seed: int) -> tuple[HookedTransformer, dict[str, str]]:
    notes = {"model.weights": "random"}
    try:
        official = get_official_model_name(name)
        if not _hf_cached(official, "tokenizer.json") and not _hf_cached(official, "vocab.json"):
            raise OSError("tokenizer not cached")
        tokenizer = AutoTokenizer.from_pretrained(official, local_files_only=True)
        notes["tokenizer"] = official
    except Exception:  # no cached tokenizer: a stand-in with ids inside the same vocab
        tokenizer = _organism_tokenizer()
        notes["tokenizer"] = "organism-standin"
        log.warning("Tokenizer for %s is not cached; using the organism tokenizer as a stand-in (random weights only).", name)
    if name not in KNOWN_SHAPES:
        raise FeatsweepError(
            f"model.random_init=true knows the shape of {sorted(KNOWN_SHAPES)} offline, not '{name}'. "
            "Use one of those names, or load real weights."
        )
    cfg = HookedTransformerConfig(**KNOWN_SHAPES[name], device=device, dtype=dtype, seed=seed)
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    return model, notes


def load_model(model_cfg, device: str, dtype: torch.dtype, seed: int) -> tuple[HookedTransformer, dict[str, str], str]:
    """A TransformerLens model, pretrained or random of its shape. Return (model, notes, identity)."""
    if ModelSource(model_cfg.source) is ModelSource.gguf:
        if not model_cfg.package or not model_cfg.gguf_file:
            raise FeatsweepError("model.source=gguf needs model.package and model.gguf_file (e.g. model=smollm2).")
        model, identity = load_gguf_model(model_cfg.package, model_cfg.gguf_file, device, dtype)
        return model, {"model.weights": "pretrained-gguf"}, identity
    if model_cfg.random_init:
        torch.manual_seed(seed)
        model, notes = _random_model(model_cfg.name, device, dtype, seed)
        return model, notes, f"random:{model_cfg.name}:seed{seed}"

    try:
        official = get_official_model_name(model_cfg.name)
    except ValueError as err:
        raise FeatsweepError(f"model.name='{model_cfg.name}' is not a TransformerLens model name: {err}") from None
    _require_weights(f"Model '{model_cfg.name}'", official, "config.json")
    try:
        model = HookedTransformer.from_pretrained(model_cfg.name, device=device, dtype=dtype)
    except OSError as err:
        raise FeatsweepError(f"Could not load model '{model_cfg.name}': {err}. {OFFLINE_FIX}") from None
    return model, {"model.weights": "pretrained"}, f"pretrained:{model_cfg.name}"


def _assets_digest(assets_dir: Optional[str]) -> str:
    root = Path(assets_dir) if assets_dir else ASSETS_DIR
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _registry_entry(release: str):
    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise FeatsweepError(f"sae.release='{release}' is not in the SAE Lens registry. Known releases include: "
                             f"{', '.join(sorted(directory)[:8])}, ...")
    return directory[release]


def random_sae(d_in: int, d_sae: int, encoder_gain: float = 1.0, bias_mean: float = -0.5, bias_std: float = 0.0,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> StandardSAE:
    """A random SAE Lens SAE with a sparse, realistic code: unit-norm decoder rows, the encoder their
    transpose (times ``encoder_gain``), and a small negative encoder bias. Draws from torch's global RNG."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, device=device, dtype=str(dtype).removeprefix("torch.")))
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
        sae.W_enc.copy_(sae.W_dec.T * encoder_gain)
        if bias_std:
            sae.b_enc.normal_(bias_mean, bias_std)
        else:
            sae.b_enc.fill_(bias_mean)
    return sae.eval()


def load_local_sae(sae_cfg, device: str, dtype: torch.dtype) -> tuple[SAE, str, Optional[str], str]:
    """An SAE saved by SAE Lens (``sae.save_model``) in the folder ``sae.path``."""
    if not sae_cfg.path:
        raise FeatsweepError("sae.source=local needs sae.path, a folder saved by SAE Lens (cfg.json + sae_weights.safetensors).")
    path = Path(sae_cfg.path)
    if not (path / "cfg.json").is_file():
        layers = sorted(int(p.name[6:]) for p in path.parent.glob("layer_*")
                        if p.name[6:].isdigit() and (p / "cfg.json").is_file()) if path.parent.is_dir() else []
        hint = f" The shipped layers: sae.layer can be one of {', '.join(map(str, layers))}." if layers else ""
        raise FeatsweepError(f"sae.path={path} holds no SAE saved by SAE Lens (no cfg.json).{hint}")
    with warnings.catch_warnings():
        # it asks for a model loaded without weight processing, which is how featsweep loads every model
        warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        sae = SAE.load_from_disk(str(path), device=device, dtype=str(dtype).removeprefix("torch."))
    return sae, sae.cfg.metadata.hook_name, None, f"local:{path.name}:{_assets_digest(str(path))}"


def load_sae(sae_cfg, model_cfg, device: str, dtype: torch.dtype, seed: int) -> tuple[SAE, str, Optional[str], str]:
    """Return (sae, hook_name, neuronpedia_id, identity)."""
    if SaeSource(sae_cfg.source) is SaeSource.local:
        return load_local_sae(sae_cfg, device, dtype)
    if not sae_cfg.release or not sae_cfg.sae_id:
        raise FeatsweepError("sae.source=sae_lens needs sae.release and sae.sae_id (e.g. sae=gpt2-small-res-jb).")
    entry = _registry_entry(sae_cfg.release)
    if sae_cfg.sae_id not in entry.saes_map:
        raise FeatsweepError(_unknown_sae_id(sae_cfg, entry.saes_map))
    neuronpedia_id = (entry.neuronpedia_id or {}).get(sae_cfg.sae_id)
    hook_name = sae_cfg.hook_name or sae_cfg.sae_id
    if sae_cfg.random_init:
        if not sae_cfg.d_sae:
            raise FeatsweepError("sae.random_init=true needs sae.d_sae (e.g. 24576 for gpt2-small-res-jb).")
        torch.manual_seed(seed + 1)
        sae = random_sae(_d_in_for(model_cfg), sae_cfg.d_sae, device=device, dtype=dtype)
        sae.cfg.metadata.hook_name = hook_name
        return sae, hook_name, neuronpedia_id, f"random:{sae_cfg.release}/{sae_cfg.sae_id}:d{sae_cfg.d_sae}:seed{seed}"
    path = entry.saes_map[sae_cfg.sae_id]
    _require_weights(f"SAE '{sae_cfg.release}/{sae_cfg.sae_id}'", entry.repo_id, f"{path}/cfg.json")
    try:
        sae = SAE.from_pretrained(release=sae_cfg.release, sae_id=sae_cfg.sae_id, device=device, dtype=str(dtype).removeprefix("torch."))
    except OSError as err:
        raise FeatsweepError(f"Could not load SAE '{sae_cfg.release}/{sae_cfg.sae_id}': {err}. {OFFLINE_FIX}") from None
    return sae, hook_name, neuronpedia_id, f"sae_lens:{sae_cfg.release}/{sae_cfg.sae_id}"


def _registry_layers(saes_map) -> list[int]:
    return sorted({int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.hook_resid_pre$", k) for k in saes_map) if m})


def _unknown_sae_id(sae_cfg, saes_map) -> str:
    """One line: the layers that have an SAE when sae.layer asked for another, else the release's ids."""
    if sae_cfg.layer is not None and sae_cfg.sae_id == f"blocks.{sae_cfg.layer}.hook_resid_pre":
        return (f"sae.layer={sae_cfg.layer}: release '{sae_cfg.release}' has no SAE at that layer; sae.layer can be one of: "
                f"{', '.join(map(str, _registry_layers(saes_map)))}.")
    return (f"sae.sae_id='{sae_cfg.sae_id}' is not in release '{sae_cfg.release}'. "
            f"Choose one of: {', '.join(list(saes_map)[:12])}")


def _d_in_for(model_cfg) -> int:
    shape = KNOWN_SHAPES.get(model_cfg.name)
    if shape is None:
        raise FeatsweepError(f"sae.random_init=true needs a known model shape; '{model_cfg.name}' is not one of {sorted(KNOWN_SHAPES)}.")
    return shape["d_model"]


def fold_decoder_norms(sae: SAE) -> None:
    """Attribution and steering write feature i's contribution as ``a_i * W_dec[i]``. A TopK SAE that rescales
    its activations by the decoder norms (``rescale_acts_by_decoder_norm``) gets them folded into the weights
    instead: the same encode and decode, and then that decomposition holds."""
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        sae.fold_W_dec_norm()
        sae.cfg.rescale_acts_by_decoder_norm = False


def check_fit(model: HookedTransformer, sae: SAE, hook_name: str) -> int:
    """The SAE must read the model's residual stream at a hook the model has, with matching width."""
    layer = hook_layer(hook_name)
    if layer >= model.cfg.n_layers:
        raise FeatsweepError(f"SAE hook '{hook_name}' needs block {layer}, but the model has {model.cfg.n_layers} blocks. "
                             "Pick an SAE for this model (sae=...) or a matching sae.sae_id.")
    if int(sae.cfg.d_in) != model.cfg.d_model:
        raise FeatsweepError(f"SAE d_in={sae.cfg.d_in} does not fit the model's d_model={model.cfg.d_model} at '{hook_name}'. "
                             "Pick an SAE trained on this model (sae=...).")
    return layer


def load_subject(cfg) -> Subject:
    """Load the model and SAE named by ``cfg.model``/``cfg.sae`` and check that they fit."""
    device = resolve_device(cfg.device)
    dtype = torch_dtype(cfg.dtype)
    model_is_organism = ModelSource(cfg.model.source) is ModelSource.organism
    if model_is_organism != (SaeSource(cfg.sae.source) is SaeSource.organism):
        raise FeatsweepError("The organism's SAE only fits the organism model: use model=organism sae=organism together, "
                             "or pick a model and an SAE trained on it (e.g. experiment=seed).")
    if model_is_organism:

        try:
            model, sae, card = load_organism(cfg.model.assets_dir, device=device, dtype=dtype, layer=cfg.sae.layer)
        except (FileNotFoundError, LookupError) as err:
            raise FeatsweepError(str(err)) from None
        hook_name, neuronpedia_id, notes = card["hook_name"], None, {"model.weights": "organism"}
        model_id = f"organism:{_assets_digest(cfg.model.assets_dir)}"
        sae_id = f"{model_id}:{hook_name}"
    else:
        model, notes, model_id = load_model(cfg.model, device, dtype, cfg.seed)
        sae, hook_name, neuronpedia_id, sae_id = load_sae(cfg.sae, cfg.model, device, dtype, cfg.seed)
    if cfg.sae.hook_name and cfg.sae.hook_name != hook_name:
        raise FeatsweepError(f"sae.hook_name='{cfg.sae.hook_name}' disagrees with the SAE's own hook '{hook_name}'.")
    layer = check_fit(model, sae, hook_name)
    fold_decoder_norms(sae)
    trained_on = getattr(sae.cfg.metadata, "model_name", None)
    if SaeSource(cfg.sae.source) is SaeSource.local and trained_on and trained_on != model.cfg.model_name:
        raise FeatsweepError(f"The SAE at sae.path={cfg.sae.path} was trained on model '{trained_on}', not on "
                             f"'{model.cfg.model_name}'. Pick an SAE trained on this model (e.g. sae=smollm2-res).")
    if cfg.sae.layer is not None and cfg.sae.layer != layer:
        raise FeatsweepError(f"sae.layer={cfg.sae.layer} disagrees with the SAE's hook '{hook_name}' (layer {layer}).")
    model.eval()
    sae.eval()
    for param in list(model.parameters()) + list(sae.parameters()):
        param.requires_grad_(False)
    return Subject(
        model=model, sae=sae, hook_name=hook_name, layer=layer,
        identity=f"{model_id}|{sae_id}|{dtype}", neuronpedia_id=neuronpedia_id, notes=notes,
    )


def neuronpedia_url(neuronpedia_id: Optional[str], feature: int) -> Optional[str]:
    return f"https://www.neuronpedia.org/{neuronpedia_id}/{feature}" if neuronpedia_id else None
