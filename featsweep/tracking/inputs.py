"""What a run was computed from, in MLflow's own terms: the task as a dataset input (the UI's "Datasets
used" column and the run page's inputs), and the model and SAE identity as tags."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow.data
from mlflow.entities import DatasetInput, InputTag

from featsweep.stages.task import ATHLETES

DATASET_COLUMNS = ["prompt", "subject", "answer", "incorrect"]


def identity_tags(cfg, subject) -> dict[str, str]:
    """``featsweep.model.name`` and ``featsweep.sae.<field>``: which weights the run used."""
    tags = {"featsweep.model.name": f"{cfg.model.source.value}:{cfg.model.name}", "featsweep.sae.hook_name": subject.hook_name}
    if cfg.sae.release:
        tags["featsweep.sae.release"] = cfg.sae.release
    if cfg.sae.sae_id:
        tags["featsweep.sae.sae_id"] = cfg.sae.sae_id
    if subject.neuronpedia_id:
        tags["featsweep.sae.neuronpedia_id"] = subject.neuronpedia_id
    return tags


def log_run_inputs(job, cfg, subject, task) -> None:
    """Log the task's prompts as the run's dataset input (context ``task``) and tag the model/SAE identity."""
    if not job.run_id:
        return
    frame = task.frame[[c for c in DATASET_COLUMNS if c in task.frame]]
    source = str(Path(cfg.task.path).resolve()) if cfg.task.path else str(ATHLETES)
    with warnings.catch_warnings():  # MLflow registers two local-file source types and warns that it picked one
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, targets="answer", name=cfg.task.name)
    job.client.log_inputs(job.run_id, datasets=[
        DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "task")])])
    for key, value in identity_tags(cfg, subject).items():
        job.tag(key, value)
