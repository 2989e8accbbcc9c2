"""The MLflow run lifecycle: everything that touches the store.

``store`` opens it safely (a lock around creation, fast failure on a dead server); ``run`` owns a job's run
(params, metrics, artifacts, resume); ``liveness`` and ``signals`` prove a run alive and close dead ones;
``naming`` names runs; ``inputs`` logs the task as a dataset; ``upload`` logs a folder after the fact
(``python -m featsweep.tracking.upload``); ``cache`` is the content-addressed stage cache shared by a sweep's jobs.

May import: the top-level vocabulary and ``stages.task``'s data paths. Never ``reports``.
"""
