"""Typed schema behind the YAML config groups.

Every group in ``featsweep/conf/`` is validated against a dataclass here, so a wrong type
or an unknown enum choice fails when Hydra composes the config, not deep inside
a stage. This module is the single place that owns each option's name, type and
default; the YAML files only pick values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from featsweep.errors import FeatsweepError

# `${fs_cwd:}` is the directory the user launched from. Hydra does not chdir
# with version_base=1.3, and jobs of any launcher inherit it, so paths built on
# it are absolute and shared by every job of a sweep.
if not OmegaConf.has_resolver("fs_cwd"):
    OmegaConf.register_new_resolver("fs_cwd", lambda: os.getcwd())
# `${fs_package:}` is the installed featsweep package's folder, for assets shipped inside it (sae=smollm2-res).
if not OmegaConf.has_resolver("fs_package"):
    OmegaConf.register_new_resolver("fs_package", lambda: os.path.dirname(os.path.abspath(__file__)))


class Device(str, Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Stage(str, Enum):
    task = "task"
    attribution = "attribution"
    network = "network"
    cooccurrence = "cooccurrence"  # corpus co-occurrence of every latent, the dictionary graph and H4
    steering = "steering"


class ModelSource(str, Enum):
    organism = "organism"  # the small model shipped in featsweep/subjects/organism/assets
    transformer_lens = "transformer_lens"  # any HookedTransformer.from_pretrained name
    gguf = "gguf"  # a GGUF file inside an installed Python package (model=smollm2; featsweep/subjects/gguf.py)


class SaeSource(str, Enum):
    organism = "organism"
    sae_lens = "sae_lens"  # SAE.from_pretrained(release, sae_id)
    local = "local"  # SAE.load_from_disk(path): a folder written by SAE Lens (sae=smollm2-res ships one per layer)


class Contrast(str, Enum):
    random_other = "random_other"  # seeded draw of another answer from the task's answer set
    mean_others = "mean_others"  # mean logit of all other answers in the task's answer set


class TaskFilter(str, Enum):
    none = "none"
    correct_top1 = "correct_top1"  # the blog's: keep prompts whose correct answer the model ranks first


class MultiTokenPolicy(str, Enum):
    error = "error"
    drop = "drop"


class Aggregation(str, Enum):
    final = "final"  # the last token of each prompt
    sum = "sum"  # sum over the kept positions
    max_abs = "max_abs"  # the value of largest magnitude over the kept positions
    last_nonzero = "last_nonzero"  # the blog's: last position where the feature is non-zero


class Selection(str, Enum):
    all_nonzero = "all_nonzero"  # the blog's: non-zero on every prompt
    min_fraction = "min_fraction"  # non-zero on at least `min_fraction` of prompts
    topk = "topk"  # the `top_k` features by mean |attribution|


class CorrelationMethod(str, Enum):
    pearson = "pearson"
    spearman = "spearman"


class EdgeSign(str, Enum):
    abs = "abs"  # |r| >= threshold, weight |r|
    positive = "positive"  # r >= threshold only


class CommunityAlgorithm(str, Enum):
    greedy_modularity = "greedy_modularity"
    louvain = "louvain"
    leiden = "leiden"


class CoocUnit(str, Enum):
    token = "token"  # both latents fire on the same token (Clarke et al.)
    window = "window"  # both fire somewhere in one window of cooccurrence.window tokens (Li et al.)


class CoocMeasure(str, Enum):
    jaccard = "jaccard"  # C_ij / (C_ii + C_jj - C_ij)
    phi = "phi"  # the phi coefficient of the 2x2 table


class SteeringMode(str, Enum):
    negative = "negative"  # A - factor * scale_i * d_i
    zero_ablate = "zero_ablate"
    mean_ablate = "mean_ablate"


class SteeringScale(str, Enum):
    gen_max = "gen_max"  # max activation on the corpus (the corpus stage), BOS excluded
    local_max = "local_max"  # largest activation on the task's prompts
    unit = "unit"


class SteeringPositions(str, Enum):
    all = "all"
    non_bos = "non_bos"
    last = "last"
    non_prefix = "non_prefix"  # after the prompts' shared prefix (e.g. few-shot examples): what attribution measures


class SteeringEngineKind(str, Enum):
    fast = "fast"  # the batched engine (steering.py)
    reference = "reference"  # one plainly hooked forward pass per condition


class SetSampling(str, Enum):
    within = "within"
    between = "between"
    random = "random"  # the H2 control: n features drawn uniformly from all kept features


@dataclass
class ModelConfig:
    source: ModelSource = ModelSource.organism
    name: str = "organism"  # TransformerLens name when source=transformer_lens
    random_init: bool = False  # random weights of the real shape, for offline tests
    assets_dir: Optional[str] = None  # organism weights; None = the shipped ones
    package: Optional[str] = None  # source=gguf: the installed Python package holding the GGUF file
    gguf_file: Optional[str] = None  # source=gguf: the file's name inside that package


@dataclass
class SaeConfig:
    source: SaeSource = SaeSource.organism
    release: Optional[str] = None  # SAE Lens registry release, e.g. gpt2-small-res-jb
    # The residual-stream layer the SAE reads (blocks.<layer>.hook_resid_pre): the one knob for a layer sweep.
    # Registry presets derive sae_id/hook_name from it; for the organism it picks one of the shipped SAEs.
    layer: Optional[int] = None
    sae_id: Optional[str] = None  # e.g. blocks.7.hook_resid_pre
    hook_name: Optional[str] = None  # where the SAE splices in; checked against the model
    d_sae: Optional[int] = None  # dictionary size, used by random_init
    random_init: bool = False
    path: Optional[str] = None  # source=local: a folder saved by SAE Lens (cfg.json + sae_weights.safetensors)


@dataclass
class TaskConfig:
    name: str = "athletes"
    path: Optional[str] = None  # CSV/JSONL; None = the packaged athletes file
    template: str = "Fact: {name} plays the sport of"
    # Text put before every prompt, e.g. few-shot examples. It is the same in every prompt, so its positions
    # belong to the shared prefix that attribution.exclude_prefix drops (like the blog's "Fact:").
    prefix: str = ""
    subject_column: str = "name"
    answer_column: str = "answer"
    answer_prefix: str = " "  # answers are predicted as the next word, with its space
    contrast: Contrast = Contrast.random_other
    on_multi_token: MultiTokenPolicy = MultiTokenPolicy.error
    limit: Optional[int] = None  # keep the first N prompts
    batch_size: int = 32
    filter: TaskFilter = TaskFilter.none  # applied after limit; the number dropped is logged

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 2:
            _bad("task.limit", self.limit, "correlations across prompts need at least 2 prompts: use task.limit>=2 "
                 "(about 100 is the method's scale), or task.limit=null for all")
        _at_least("task.batch_size", self.batch_size, 1)


@dataclass
class AttributionConfig:
    batch_size: int = 16
    aggregation: Aggregation = Aggregation.sum
    exclude_prefix: bool = True  # drop positions identical in every prompt (BOS, "Fact", ":")
    selection: Selection = Selection.all_nonzero
    min_fraction: float = 0.9
    top_k: int = 200

    def __post_init__(self) -> None:
        _at_least("attribution.batch_size", self.batch_size, 1)
        if not 0 < self.min_fraction <= 1:
            _bad("attribution.min_fraction", self.min_fraction, "use a fraction of prompts in (0, 1]")
        _at_least("attribution.top_k", self.top_k, 1)


@dataclass
class ClusteringConfig:
    method: CorrelationMethod = CorrelationMethod.pearson
    threshold: float = 0.7  # edge when |r| >= threshold (inclusive)
    edges: EdgeSign = EdgeSign.positive
    weighted: bool = True
    algorithm: CommunityAlgorithm = CommunityAlgorithm.greedy_modularity
    resolution: float = 1.0
    min_cluster_size: int = 10  # keep clusters with >= this many features (inclusive)
    n_null: int = 300  # permutation-null repeats (also the edge-matched null of the cluster tests)
    n_bootstrap: int = 30  # prompt-bootstrap repeats for stability
    # Compute guard: keep the top features by mean |attribution| beyond this (tagged on the run); the H1 draws'
    # cost grows with features x edges x draws (docs/measurements.md, "network stage"). null = no cap.
    max_features: Optional[int] = 2000
    # H1's graph-aware null: degree-preserving rewirings of the observed graph, reclustered (0 = off)
    n_rewire: int = 300
    # the blog's notebook: re-detect communities on the subgraph of the kept clusters, then keep again
    recluster_kept: bool = False
    # processes for the H1 draws (same numbers); null = every core from 400 features (rewired_null.draw_jobs)
    n_jobs: Optional[int] = None
    # The cluster tests' betweenness and closeness (observed graph and every null graph alike): in a component of
    # more nodes than this, estimated from this many seeded random source nodes (O(sources * edges) instead of
    # O(nodes * edges)); exact below, and everywhere with null. The features table keeps the exact values.
    centrality_sources: Optional[int] = 256
    # H1's test of discreteness: draws of each fitted continuum (segment, circle, sheet), reclustered
    # (featsweep/hypotheses/discreteness.py); 0 = off (H1 is then inconclusive)
    n_continuum: int = 200

    def __post_init__(self) -> None:
        for key in ("n_rewire", "n_continuum", "n_null", "n_bootstrap"):
            _at_least(f"clustering.{key}", getattr(self, key), 0)
        if self.centrality_sources is not None:
            _at_least("clustering.centrality_sources", self.centrality_sources, 2)
        if self.n_jobs is not None:
            _at_least("clustering.n_jobs", self.n_jobs, 1)
        if not 0 < self.threshold <= 1:
            _bad("clustering.threshold", self.threshold, "use a correlation in (0, 1], e.g. clustering.threshold=0.3")
        _at_least("clustering.min_cluster_size", self.min_cluster_size, 1)
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            _bad("clustering.resolution", self.resolution, "use a positive number (1.0 is standard modularity)")
        if self.max_features is not None and self.max_features < 2:
            _bad("clustering.max_features", self.max_features, "use at least 2, or clustering.max_features=null for no cap")


@dataclass
class CooccurrenceConfig:
    """Corpus co-occurrence of every SAE latent (featsweep/engines/cooccurrence.py) and H4."""

    unit: CoocUnit = CoocUnit.token
    window: int = 16  # tokens per window (unit=window); at most the model's context
    activation_threshold: float = 0.0  # active above this, added to a JumpReLU SAE's own threshold
    measure: CoocMeasure = CoocMeasure.jaccard
    # edge when weight >= this (a number in (0, 1]), or "auto": the lowest weight at which the largest connected
    # component has at most auto_max_size latents, which must be at least auto_min_size (Clarke et al.: 150-200)
    edge_threshold: str = "auto"
    floor: float = 0.01  # pairs with a lower weight are not kept (no edge can use them): at most edge_threshold
    auto_min_size: int = 150
    auto_max_size: int = 200
    algorithm: CommunityAlgorithm = CommunityAlgorithm.leiden  # dictionary communities
    resolution: float = 1.0
    batch_size: int = 32  # corpus rows per forward pass
    n_labels: int = 3  # logit-lens top tokens per latent
    n_permutations: int = 1000  # H4's label permutations
    n_matched: int = 1000  # H4's random latent sets matched in firing density
    density_bins: int = 10  # firing-density quantile bins for the matched sets

    def __post_init__(self) -> None:
        _at_least("cooccurrence.window", self.window, 1)
        if not (math.isfinite(self.activation_threshold) and self.activation_threshold >= 0):
            _bad("cooccurrence.activation_threshold", self.activation_threshold, "use a number >= 0 (0 = the SAE's own)")
        self.edge_threshold = str(self.edge_threshold)
        if self.edge_threshold != "auto":
            try:
                value = float(self.edge_threshold)
            except ValueError:
                value = float("nan")
            if not 0 < value <= 1:
                _bad("cooccurrence.edge_threshold", self.edge_threshold, "use auto or a weight in (0, 1], e.g. "
                     "cooccurrence.edge_threshold=0.2")
            if value < self.floor:
                _bad("cooccurrence.edge_threshold", self.edge_threshold, f"pairs below cooccurrence.floor={self.floor} "
                     "are not kept: raise the threshold or lower cooccurrence.floor")
        if not 0 <= self.floor <= 1:
            _bad("cooccurrence.floor", self.floor, "use a weight in [0, 1] (0 keeps every pair that co-fired)")
        _at_least("cooccurrence.auto_min_size", self.auto_min_size, 2)
        if self.auto_max_size < self.auto_min_size:
            _bad("cooccurrence.auto_max_size", self.auto_max_size, f"use at least cooccurrence.auto_min_size="
                 f"{self.auto_min_size}")
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            _bad("cooccurrence.resolution", self.resolution, "use a positive number (1.0 is standard modularity)")
        for key in ("batch_size", "n_labels", "density_bins"):
            _at_least(f"cooccurrence.{key}", getattr(self, key), 1)
        for key in ("n_permutations", "n_matched"):
            _at_least(f"cooccurrence.{key}", getattr(self, key), 0)


@dataclass
class SteeringConfig:
    mode: SteeringMode = SteeringMode.negative
    scale: SteeringScale = SteeringScale.gen_max
    positions: SteeringPositions = SteeringPositions.all
    factor: float = 10.0
    # the push is factor_base * factor; the blog multiplied every factor by a base of 2 (its "10" = our 20)
    factor_base: float = 1.0
    normalize_by_set_size: bool = False
    # a steered feature with scale 0 gets its task max activation (else the median steered scale) instead
    # of silently not being pushed (steering.n_zero_scale counts them)
    zero_scale_fallback: bool = True
    set_sizes: List[int] = field(default_factory=lambda: [1, 2, 3, 4])
    samples_per_size: int = 20
    sampling: List[SetSampling] = field(
        default_factory=lambda: [SetSampling.within, SetSampling.between, SetSampling.random]
    )
    n_permutations: int = 2000  # H2's label-permutation tests
    # Rows (conditions x prompts) per forward through the layers after the hook: null = token_budget / the number
    # of positions each row recomputes (all positions for positions=all, 1 for positions=last).
    batch_size: Optional[int] = None
    token_budget: Optional[int] = None  # rows x recomputed positions per forward; null = from the model's shape
    engine: SteeringEngineKind = SteeringEngineKind.fast

    def __post_init__(self) -> None:
        if not math.isfinite(self.factor):
            _bad("steering.factor", self.factor, "use a finite number, e.g. steering.factor=10")
        if not (math.isfinite(self.factor_base) and self.factor_base > 0):
            _bad("steering.factor_base", self.factor_base, "use a positive number (2.0 is the blog's base)")
        if not self.set_sizes or min(self.set_sizes) < 1:
            _bad("steering.set_sizes", list(self.set_sizes), "a set needs at least one feature: use positive sizes, "
                 "e.g. steering.set_sizes=[1,2,3,4]")
        _at_least("steering.samples_per_size", self.samples_per_size, 1)
        _at_least("steering.n_permutations", self.n_permutations, 1)
        if self.batch_size is not None:
            _at_least("steering.batch_size", self.batch_size, 1)
        if self.token_budget is not None:
            _at_least("steering.token_budget", self.token_budget, 1)


class CorpusSource(str, Enum):
    offline = "offline"  # text every machine has: the organism's held-out text, else Python's docs + docstrings
    huggingface = "huggingface"  # a Hugging Face dataset through `datasets` (corpus=pile10k)
    file = "file"  # corpus.path: a .txt/.jsonl/.csv file or a folder of them (any source with corpus.path set)


@dataclass
class CorpusConfig:
    """The text features are described on (featsweep/stages/corpus.py; data card: docs/corpus.md)."""

    name: str = "offline"
    source: CorpusSource = CorpusSource.offline
    path: Optional[str] = None  # a .txt/.jsonl/.csv file or a folder of them; set, it is the corpus
    dataset: Optional[str] = None  # source=huggingface: the dataset's name, e.g. NeelNanda/pile-10k
    split: str = "train"
    text_column: str = "text"  # .jsonl/.csv files and datasets: the column holding the text
    n_tokens: int = 65_536  # tokens read (fewer when the corpus is shorter)
    context: Optional[int] = None  # tokens per row (BOS first); null = min(128, the model's n_ctx)
    batch_size: int = 16  # rows per forward
    top_k: int = 20  # top-activating contexts kept per latent

    def __post_init__(self) -> None:
        for key, low in (("n_tokens", 1), ("batch_size", 1), ("top_k", 1)) + ((("context", 2),) if self.context is not None else ()):
            _at_least(f"corpus.{key}", getattr(self, key), low)
        if CorpusSource(self.source) is CorpusSource.huggingface and not self.dataset and not self.path:
            _bad("corpus.dataset", None, "corpus.source=huggingface needs a dataset name, e.g. corpus=pile10k")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///${fs_cwd:}/mlflow.db"
    artifact_root: str = "${fs_cwd:}/mlruns"
    experiment: str = "featsweep"
    run_name: Optional[str] = None
    skip_finished: bool = True  # resume: skip a job whose config already FINISHED


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = "${fs_cwd:}/.featsweep_cache"


@dataclass
class Config:
    seed: int = 0
    device: Device = Device.auto
    dtype: DType = DType.float32
    stages: List[Stage] = field(
        default_factory=lambda: [Stage.task, Stage.attribution, Stage.network, Stage.cooccurrence, Stage.steering]
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    sae: SaeConfig = field(default_factory=SaeConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cooccurrence: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if not self.stages:
            _bad("stages", [], "give at least one of task, attribution, network, cooccurrence, steering")


def _bad(key: str, value: Any, fix: str) -> None:
    raise FeatsweepError(f"{key}={value}: {fix}.")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        _bad(key, value, f"use {low} or more")


def checked(cfg: Any) -> Config:
    """The composed config as typed dataclasses: every value check in this module runs here, once, before
    any run opens or any model loads. Interpolations are resolved; enum fields hold Enum members."""
    if isinstance(cfg, Config):
        return cfg
    try:
        return OmegaConf.to_object(cfg)
    except FeatsweepError:
        raise
    except Exception as err:  # OmegaConf wraps errors raised in __post_init__
        cause = err.__cause__ or err.__context__
        if isinstance(cause, FeatsweepError):
            raise cause from None
        raise


def register_configs() -> None:
    """Register the schema so `conf/config.yaml` can extend it as `base_config`."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


def to_container(cfg: Any) -> dict:
    """Resolved plain-dict view of a config, composed or typed (enums become their string values)."""
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
