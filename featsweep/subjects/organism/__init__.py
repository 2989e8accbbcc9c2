"""The model organism: a small HookedTransformer trained on a synthetic athlete-fact
corpus plus an SAE trained on it with SAE Lens. The offline default of featsweep.

Rebuild the shipped assets with ``python -m featsweep.subjects.organism.train``.
"""

from .card import measure_card, task_metrics, task_prompts
from .load import ASSETS_DIR, available_layers, load_organism, load_tokenizer

__all__ = ["ASSETS_DIR", "available_layers", "load_organism", "load_tokenizer", "measure_card", "task_metrics", "task_prompts"]
