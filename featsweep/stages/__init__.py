"""The pipeline's stages, each a plain function of its inputs that returns a ``StageResult``.

``task`` (prompts, answer tokens, baseline) -> ``attribution`` (a_i * d_i . grad m per feature) -> ``network``
(correlation graph, communities, centralities, H1) -> ``steering`` (the H2/H3 experiments). ``featsweep.pipeline``
runs them in order, caches them and hands each result to tracking.

May import: ``engines``, ``hypotheses``, ``subjects`` (helpers such as Neuronpedia links), and the top-level vocabulary (``config``, ``results``, ``errors``, ``plots``).
Never ``tracking`` or ``reports``: stages know nothing of MLflow or pages.
"""
