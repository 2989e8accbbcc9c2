"""The task: prompts, answer tokens, the logit-difference metric and baseline performance.

Prompts have different lengths, so every batch holds prompts of one token length
(no padding): the last position is then the prediction for every row, exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from featsweep.config import Contrast, MultiTokenPolicy, TaskFilter
from featsweep.errors import FeatsweepError
from featsweep.results import PERFORMANCE_COLUMNS, StageResult
from featsweep import DATA_DIR

log = logging.getLogger(__name__)

ATHLETES = DATA_DIR / "athletes.csv"
FEW_PROMPTS = 10  # fewer prompts than this: a warning (correlations across prompts are meaningless)


@dataclass
class Task:
    frame: pd.DataFrame  # one row per prompt: prompt, subject, answer, incorrect, correct_id, incorrect_id
    tokens: list[torch.Tensor]  # 1-D token ids per prompt, BOS included, on CPU
    correct_ids: torch.Tensor  # [n]
    incorrect_ids: torch.Tensor  # [n]; used by contrast=random_other
    answer_ids: torch.Tensor  # [k] distinct answer tokens; used by contrast=mean_others
    contrast: Contrast
    prefix_len: int  # leading positions whose token is the same in every prompt (BOS, "Fact", ":")
    n_filtered_out: int = 0  # prompts dropped by task.filter
    filter_note: str = ""  # set when task.filter could not be applied

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (prompt indices, tokens [b, T]) with every prompt in a batch of the same length."""
        lengths = self.lengths
        for length in np.unique(lengths):
            idx = np.flatnonzero(lengths == length)
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                yield chunk, torch.stack([self.tokens[i] for i in chunk])

    def logit_diff(self, logits_last: torch.Tensor, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """m = logit(correct) - logit(incorrect), or minus the mean logit of the other answers."""
        idx = torch.as_tensor(idx, device=self.correct_ids.device)
        correct = self.correct_ids[idx].to(logits_last.device)
        # logits_last may hold several conditions per prompt: [..., b, V]
        correct_logit = logits_last.gather(-1, correct.expand(logits_last.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        if self.contrast is Contrast.random_other:
            incorrect = self.incorrect_ids[idx].to(logits_last.device)
            other = logits_last.gather(-1, incorrect.expand(logits_last.shape[:-1]).unsqueeze(-1)).squeeze(-1)
            return correct_logit - other
        answers = self.answer_ids.to(logits_last.device)
        answer_logits = logits_last[..., answers]  # [..., b, k]
        is_correct = (answers == correct.unsqueeze(-1)).to(answer_logits.dtype)  # [b, k]
        others_mean = (answer_logits * (1 - is_correct)).sum(-1) / (1 - is_correct).sum(-1)
        return correct_logit - others_mean

    def performance(self, logits_last: torch.Tensor, idx: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-prompt performance from last-position logits [..., b, V]."""
        logits_last = logits_last.float()
        idx_t = torch.as_tensor(idx, device=self.correct_ids.device)
        correct = self.correct_ids[idx_t].to(logits_last.device).expand(logits_last.shape[:-1]).unsqueeze(-1)
        correct_logit = logits_last.gather(-1, correct).squeeze(-1)
        top10 = logits_last.topk(10, dim=-1).values.log_softmax(-1)
        return {
            "prob": logits_last.log_softmax(-1).gather(-1, correct).squeeze(-1).exp(),
            "rank": (logits_last > correct_logit.unsqueeze(-1)).sum(-1).float(),
            "logit": correct_logit,
            "top10_entropy": -(top10.exp() * top10).sum(-1),
            "logit_diff": self.logit_diff(logits_last, idx),
        }


def read_task_rows(task_cfg) -> pd.DataFrame:
    path = Path(task_cfg.path) if task_cfg.path else ATHLETES
    if not path.is_absolute() and not path.exists() and (ATHLETES.parent / path).exists():
        path = ATHLETES.parent / path  # a task file shipped in featsweep/data, named by file name
    if not path.exists():
        raise FeatsweepError(f"task.path={path} does not exist. Give a CSV or JSONL file, or task.path=null for the athletes task.")
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise FeatsweepError(f"task.path={path}: use a .csv or .jsonl file.")
    try:
        if path.stat().st_size == 0:
            raise FeatsweepError(f"task.path={path} is empty (0 bytes). Give a file with a header line and one row per prompt.")
        if path.suffix == ".csv":
            rows = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        else:
            rows = pd.read_json(path, lines=path.suffix == ".jsonl", dtype=str, encoding="utf-8")
    except UnicodeDecodeError:
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
            where = ""
        except UnicodeDecodeError as err:  # the position in the whole file, not in pandas' chunk
            line = raw[: err.start].count(b"\n") + 1
            where = f" (byte {raw[err.start:err.start + 1]!r} at offset {err.start}, line {line})"
        raise FeatsweepError(f"task.path={path} is not UTF-8 text{where}. Save it as UTF-8 "
                             "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`).") from None
    except pd.errors.EmptyDataError:
        raise FeatsweepError(f"task.path={path} has no columns. Give a header line and one row per prompt.") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise FeatsweepError(f"task.path={path} cannot be parsed ({str(err).splitlines()[0][:160]}). "
                             "Check that it is a well-formed CSV or JSONL file.") from None
    except OSError as err:
        raise FeatsweepError(f"task.path={path} cannot be read ({err.strerror}).") from None
    for column in (task_cfg.subject_column, task_cfg.answer_column):
        if column not in rows.columns:
            raise FeatsweepError(f"Task file {path} has no column '{column}' (columns: {list(rows.columns)}). "
                                 "Set task.subject_column / task.answer_column.")
    if len(rows) == 0:
        raise FeatsweepError(f"Task file {path} has no rows.")
    return rows.reset_index(drop=True)


def _prompt(template: str, row: pd.Series, subject_column: str) -> str:
    try:
        return template.format(**row.to_dict(), subject=row[subject_column])
    except KeyError as err:
        raise FeatsweepError(f"task.template names {err} but the task has no such column.") from None


def single_token_ids(model, words: list[str]) -> dict[str, int | None]:
    """Token id of each word, or None where the tokenizer splits it."""
    ids = {}
    for word in words:
        toks = model.to_tokens(word, prepend_bos=False)[0]
        ids[word] = int(toks[0]) if len(toks) == 1 else None
    return ids


def shared_prefix_len(tokens: list[torch.Tensor]) -> int:
    shortest = min(len(t) for t in tokens)
    for pos in range(shortest):
        if any(int(t[pos]) != int(tokens[0][pos]) for t in tokens[1:]):
            return pos
    return shortest - 1  # never treat the final (predicting) position as prefix


def load_task(task_cfg, model, seed: int) -> Task:
    """Build the task for ``model``'s tokenizer. Answers must each be one token."""
    rows = read_task_rows(task_cfg)
    rows["answer_text"] = task_cfg.answer_prefix + rows[task_cfg.answer_column].astype(str)
    ids = single_token_ids(model, sorted(rows["answer_text"].unique()))
    bad = sorted(word for word, tid in ids.items() if tid is None)
    if bad:
        if MultiTokenPolicy(task_cfg.on_multi_token) is MultiTokenPolicy.error:
            raise FeatsweepError(
                f"These answers are not a single token for this model's tokenizer: {[w for w in bad]}. "
                "Fix the task file, or add task.on_multi_token=drop to drop those prompts."
            )
        rows = rows[~rows["answer_text"].isin(bad)].reset_index(drop=True)
    answers = sorted(rows["answer_text"].unique())  # the answer set of the whole file, before any limit
    if len(answers) < 2:
        raise FeatsweepError("The task needs at least two distinct answers to form a logit difference.")
    if task_cfg.limit is not None:  # >= 2, checked by TaskConfig
        rows = rows.iloc[: task_cfg.limit].reset_index(drop=True)
    if len(rows) < FEW_PROMPTS:
        log.warning("Only %d prompts: correlations across so few prompts are mostly noise, so the network, H1 and "
                    "H3 mean little. Use at least %d (task.limit=null uses the whole file).", len(rows), FEW_PROMPTS)
    # Seeded incorrect answer: uniform over the task's other answers (fixes the original's unseeded draw).
    rng = np.random.default_rng(seed)
    rows["incorrect_text"] = [rng.choice([a for a in answers if a != ans]) for ans in rows["answer_text"]]
    prompts = [task_cfg.prefix + _prompt(task_cfg.template, row, task_cfg.subject_column) for _, row in rows.iterrows()]
    in_prefix = [s for s in rows[task_cfg.subject_column].astype(str) if task_cfg.prefix and s in task_cfg.prefix]
    if in_prefix:
        log.warning("task.prefix names %d of the task's own subjects (%s): their prompts show the answer. Use "
                    "examples that are not in the task.", len(in_prefix), ", ".join(in_prefix[:5]))
    tokens = [model.to_tokens(p, prepend_bos=True)[0].cpu() for p in prompts]
    frame = pd.DataFrame({
        "prompt": prompts,
        "subject": rows[task_cfg.subject_column],
        "answer": rows["answer_text"],
        "incorrect": rows["incorrect_text"],
        "correct_id": [ids[a] for a in rows["answer_text"]],
        "incorrect_id": [ids[a] for a in rows["incorrect_text"]],
        "n_tokens": [len(t) for t in tokens],
    })
    task = Task(
        frame=frame,
        tokens=tokens,
        correct_ids=torch.tensor(frame["correct_id"].to_numpy()),
        incorrect_ids=torch.tensor(frame["incorrect_id"].to_numpy()),
        answer_ids=torch.tensor([ids[a] for a in answers]),
        contrast=Contrast(task_cfg.contrast),
        prefix_len=shared_prefix_len(tokens),
    )
    if TaskFilter(getattr(task_cfg, "filter", TaskFilter.none)) is TaskFilter.correct_top1:
        task = filter_correct_top1(model, task, task_cfg.batch_size)
    return task


def filter_correct_top1(model, task: Task, batch_size: int = 32) -> Task:
    """The blog's filter: keep the prompts whose correct answer the model ranks first (``task.filter``).

    With fewer than 2 such prompts (e.g. random weights) nothing is dropped and ``filter_note`` says why
    (logged as the tag ``task.filter_skipped`` with a warning): correlations need at least 2 prompts."""
    keep = np.flatnonzero(baseline_performance(model, task, batch_size)["rank"].to_numpy() == 0)
    if len(keep) < 2:
        note = (f"task.filter=correct_top1 not applied: only {len(keep)} of {task.n} prompts have the correct "
                "answer ranked first (at least 2 are needed); all prompts kept.")
        log.warning(note)
        return dataclasses.replace(task, filter_note=note)
    tokens = [task.tokens[i] for i in keep]
    return dataclasses.replace(
        task, frame=task.frame.iloc[keep].reset_index(drop=True), tokens=tokens, correct_ids=task.correct_ids[keep],
        incorrect_ids=task.incorrect_ids[keep], prefix_len=shared_prefix_len(tokens), n_filtered_out=task.n - len(keep))


@torch.inference_mode()
def baseline_performance(model, task: Task, batch_size: int = 32) -> pd.DataFrame:
    """Per-prompt performance of the unmodified model."""
    out = {name: np.zeros(task.n) for name in PERFORMANCE_COLUMNS}
    device = model.cfg.device
    for idx, tokens in tqdm(list(task.batches(batch_size)), desc="baseline", leave=False):
        logits = model(tokens.to(device))[:, -1]
        for name, value in task.performance(logits, idx).items():
            out[name][idx] = value.cpu().numpy()
    table = task.frame[["prompt", "subject", "answer", "incorrect"]].copy()
    table.insert(0, "prompt_idx", np.arange(task.n))
    for name in PERFORMANCE_COLUMNS:
        table[name] = out[name]
    table["rank"] = table["rank"].astype(int)
    return table


def task_stage(model, task: Task, batch_size: int) -> tuple[pd.DataFrame, StageResult]:
    table = baseline_performance(model, task, batch_size)
    result = StageResult(
        metrics={
            "task.n_prompts": float(task.n),
            "task.accuracy": float((table["rank"] == 0).mean()),
            "task.mean_prob": float(table["prob"].mean()),
            "task.mean_rank": float(table["rank"].mean()),
            "task.mean_top10_entropy": float(table["top10_entropy"].mean()),
            "task.mean_logit_diff": float(table["logit_diff"].mean()),
            "task.prefix_len": float(task.prefix_len),
            "task.n_filtered_out": float(task.n_filtered_out),
        },
        tables={"tables/task_baseline.parquet": table},
    )
    if task.filter_note:
        result.tags["task.filter_skipped"] = task.filter_note
    return table, result
