"""The SAE Lens runner settings for a featsweep SAE training that runs the model batch by batch (the organism's).

It trains on a tokenized in-memory dataset on the CPU, one document per row with BOS first and no concatenation
across rows, float32, no W&B and no checkpoints; what differs (the SAE architecture, the hook, the text, the
schedule) is passed in. SmolLM2's SAEs do not use it: they train with SAE Lens's ``SAETrainer`` on activations
from one model pass for all layers (``featsweep.subjects.smollm2.train``).
"""

from __future__ import annotations

from pathlib import Path


def cpu_runner_config(sae, *, model_name: str, hook_name: str, dataset_path: str, context_size: int,
                      exclude_special_tokens, training_tokens: int, batch_tokens: int, store_batch_size_prompts: int,
                      n_batches_in_buffer: int, lr: float, warm_up_steps: int, dead_feature_window: int,
                      seed: int, output_path: Path):
    """A ``LanguageModelSAERunnerConfig`` for an offline CPU training on a pre-tokenized dataset.

    Cosine annealing decays over the first third of the steps; features count as dead after
    ``dead_feature_window`` steps without firing, sampled over twice that window."""
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.config import LoggingConfig

    return LanguageModelSAERunnerConfig(
        sae=sae,
        model_name=model_name,  # recorded as the SAE's metadata.model_name: load_subject checks it
        model_class_name="HookedTransformer",
        hook_name=hook_name,
        dataset_path=dataset_path,
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        prepend_bos=True,
        disable_concat_sequences=True,
        exclude_special_tokens=exclude_special_tokens,
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_tokens,
        store_batch_size_prompts=store_batch_size_prompts,
        n_batches_in_buffer=n_batches_in_buffer,  # SAE Lens: buffer = n_batches_in_buffer x context_size tokens
        lr=lr,
        lr_warm_up_steps=warm_up_steps,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=max(1, training_tokens // batch_tokens // 3),
        dead_feature_window=dead_feature_window,
        feature_sampling_window=2 * dead_feature_window,
        device="cpu",
        seed=seed,
        dtype="float32",
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        n_checkpoints=0,
        output_path=str(output_path),
        verbose=False,
    )
