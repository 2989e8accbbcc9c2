"""The intervention engine: steer or ablate SAE features at the SAE's hook point and measure the task.

Interventions (``steering.mode``), applied to the residual stream ``x`` at ``subject.hook_name`` on the
positions chosen by ``steering.positions`` (``all``, ``non_bos`` = every position but 0, ``last``):

* ``negative``: ``x <- x - factor * sum_{i in set} scale_i * d_i``. This is a NEGATIVE push: the
  residual moves AGAINST each feature's decoder direction ``d_i = W_dec[i]`` (a positive ``factor``
  lowers the feature's presence). ``factor`` is the condition's factor, already divided by the set
  size when ``steering.normalize_by_set_size`` is on; ``scale_i`` comes from :func:`steering_scales`.
* ``zero_ablate``: ``x <- x - sum_i a_i(x) d_i``: the SAE reconstruction with the feature's
  activation set to zero, plus the SAE error term (which is kept), i.e. only the feature's
  contribution through the SAE is removed. ``factor`` and ``scale`` do not apply.
* ``mean_ablate``: ``x <- x + sum_i (mean_i - a_i(x)) d_i`` with ``mean_i`` the feature's mean
  activation over the task's non-BOS positions (:func:`mean_activations`). ``factor``/``scale`` do not apply.

Activations ``a_i(x)`` are always those of the unsteered residual at that position. Two implementations that must agree (``tests/engines/test_intervention.py`` checks every mode x scale x positions):

* :func:`reference_run`: the plain approach, one full forward pass with a TransformerLens hook per condition.
* :class:`SteeringEngine`: runs the model up to the hook once per prompt length and caches the
  residual (and the clean keys/values of every later layer, once per distinct run of tokens before the first
  steered position); then pushes many conditions at once
  through blocks ``L..`` only, in chunks of rows (row = condition x prompt) sized by a token budget:
  ``steering.token_budget`` tokens (rows x recomputed positions) per forward, chosen from the model's
  shape when null (:func:`auto_token_budget`); ``steering.batch_size`` fixes the row count instead.
  Plain pre-norm blocks (LayerNorm, learned positions, standard attention and MLP, e.g. GPT-2 and the
  organism) run as a few fused ops (:class:`_FusedBlock`: ``F.layer_norm``, one Q/K/V matmul, SDPA, one-pass
  GELU), Llama-style ones too (``engines.fused_llama``); other architectures run TransformerLens's blocks.
  Positions before the first steered one are unchanged, so their keys/values are reused from the
  clean pass (frozen TransformerLens KV-cache entries) and only the later positions are recomputed:
  with ``positions=last`` only the last position goes through the tail. In the final block only the
  last position's output is needed, so there only keys/values are computed for earlier positions.
  ``ln_final`` + unembed run on the final position only, under ``torch.inference_mode``.

The engine assumes the SAE decoder is affine in the activations (``decode(a) = a @ W_dec + b_dec``),
true of SAE Lens standard/top-k/JumpReLU SAEs without ``constant_norm_rescale`` output normalisation;
the reference uses ``decode`` itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from featsweep.config import SteeringEngineKind, SteeringMode, SteeringPositions, SteeringScale
from featsweep.errors import FeatsweepError
from featsweep.engines.fused_llama import fused_tail  # picks the GPT-2 or the Llama tail
from featsweep.engines.fused_tail import _kv_shortcut_ok, rows_per_chunk
from featsweep.results import PERFORMANCE_COLUMNS

log = logging.getLogger(__name__)

# Largest logits block (bytes) that the final unembed writes at once: logits are [rows, d_vocab] float32 and
# the task metrics read them several times, so a block stays far below the tail's own activations.
LOGITS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Condition:
    """One intervention: a set of SAE features and the factor they are pushed with.

    ``factor`` is final: when ``steering.normalize_by_set_size`` is on, the caller has already divided
    it by ``len(features)``. A positive factor pushes the residual against the decoder directions.
    """

    features: tuple[int, ...]
    factor: float


def steering_scales(scale: SteeringScale | str, d_sae: int, gen_max: Optional[np.ndarray],
                    attrs=None) -> np.ndarray:
    """Per-feature steering scale ``[d_sae]`` (float64).

    * ``gen_max``: the feature's max activation on the corpus (the corpus stage; BOS excluded), as given.
    * ``local_max``: its largest activation on the task's prompts: the max of ``attrs.table.activation``
      per feature (0 for a feature never active there, so it is not pushed at all).
    * ``unit``: 1 for every feature (the push is ``factor`` times the unit-norm-ish decoder row).
    """
    scale = SteeringScale(scale)
    if scale is SteeringScale.unit:
        return np.ones(d_sae)
    if scale is SteeringScale.gen_max:
        if gen_max is None:
            raise FeatsweepError("steering.scale=gen_max needs the features' max activations on the corpus, "
                                 "but none were given. Use steering.scale=local_max or steering.scale=unit.")
        gen_max = np.asarray(gen_max, dtype=np.float64)
        if gen_max.shape != (d_sae,):
            raise FeatsweepError(f"gen_max has shape {gen_max.shape}, expected ({d_sae},) (one value per SAE feature).")
        return gen_max.copy()
    if attrs is None:
        raise FeatsweepError("steering.scale=local_max needs the attribution table (task activations); "
                             "run the attribution stage or use steering.scale=gen_max|unit.")
    out = np.zeros(d_sae)
    table = attrs.table
    if len(table):
        per_feature = table.groupby("feature")["activation"].max()
        out[per_feature.index.to_numpy(dtype=int)] = per_feature.to_numpy(dtype=np.float64)
    return out


def fill_zero_scales(scales: np.ndarray, steered, attrs=None) -> tuple[np.ndarray, int]:
    """The zero-scale fallback (``steering.zero_scale_fallback``): a steered feature whose scale is 0 (with
    ``gen_max``: never active in the corpus) would silently not be pushed at all. It gets its largest
    activation on the task's prompts (its ``local_max``) instead; where that is 0 too, the median non-zero
    scale of the steered features. Returns the new scales and how many steered features had scale 0."""
    scales = np.asarray(scales, dtype=np.float64).copy()
    steered = np.unique(np.asarray(list(steered), dtype=int))
    zero = steered[scales[steered] <= 0]
    if len(zero) == 0:
        return scales, 0
    local = steering_scales(SteeringScale.local_max, len(scales), None, attrs) if attrs is not None else np.zeros_like(scales)
    scales[zero] = local[zero]
    positive = scales[steered][scales[steered] > 0]
    still = zero[scales[zero] <= 0]
    if len(still) and len(positive):
        scales[still] = float(np.median(positive))
    log.warning("%d steered feature(s) had steering scale 0 (e.g. never active in the corpus); used their "
                "task max activation (local_max), else the median steered scale.", len(zero))
    return scales, int(len(zero))


@torch.inference_mode()
def mean_activations(subject, task, batch_size: int = 32) -> np.ndarray:
    """Mean SAE activation of every feature over the task's non-BOS positions ``[d_sae]`` (for mean_ablate)."""
    model, sae = subject.model, subject.sae
    device = _device(model)
    total = torch.zeros(subject.d_sae, dtype=torch.float64)
    count = 0
    for _, tokens in task.batches(batch_size):
        resid = model(tokens.to(device), stop_at_layer=subject.layer)[:, 1:]
        acts = sae.encode(resid.to(sae.W_dec.dtype))
        total += acts.double().sum((0, 1)).cpu()
        count += acts.shape[0] * acts.shape[1]
    return (total / max(count, 1)).numpy()


def _device(model) -> torch.device:
    return torch.device(model.cfg.device) if model.cfg.device is not None else torch.device("cpu")


def first_steered(positions: SteeringPositions, length: int, prefix_len: int) -> int:
    """The first steered position of a prompt of ``length`` tokens (every later one is steered too)."""
    return {SteeringPositions.all: 0, SteeringPositions.non_bos: 1, SteeringPositions.last: length - 1,
            SteeringPositions.non_prefix: min(prefix_len, length - 1)}[positions]


def _check_conditions(conditions: list[Condition], d_sae: int) -> None:
    for cond in conditions:
        if len(cond.features) == 0:
            raise FeatsweepError("A steering condition has an empty feature set; every set needs at least one feature.")
        bad = [f for f in cond.features if not 0 <= int(f) < d_sae]
        if bad:
            raise FeatsweepError(f"Steering features {bad} are outside the SAE's dictionary (0..{d_sae - 1}).")
        if not np.isfinite(cond.factor):
            raise FeatsweepError(f"Steering factor {cond.factor} is not a finite number.")


def _needs_means(mode: SteeringMode, mean_acts) -> None:
    if mode is SteeringMode.mean_ablate and mean_acts is None:
        raise FeatsweepError("steering.mode=mean_ablate needs mean activations: pass mean_acts=mean_activations(subject, task).")


# ---- reference: one hooked full forward pass per condition ---------------------------------------------

def reference_run(subject, task, cfg, scales: np.ndarray, conditions: list[Condition],
                  mean_acts: Optional[np.ndarray] = None, progress: bool = False) -> dict[str, np.ndarray]:
    """The plain approach: for every condition, a full forward pass with a TransformerLens hook at the
    SAE's hook point. Returns ``metric -> [C, n_prompts]`` (metrics of ``task.PERFORMANCE_COLUMNS``)."""
    mode, positions = SteeringMode(cfg.mode), SteeringPositions(cfg.positions)
    _check_conditions(conditions, subject.d_sae)
    _needs_means(mode, mean_acts)
    model, sae = subject.model, subject.sae
    device = _device(model)
    W_dec = sae.W_dec
    scales_t = torch.as_tensor(np.asarray(scales), dtype=W_dec.dtype, device=W_dec.device)
    means_t = None if mean_acts is None else torch.as_tensor(np.asarray(mean_acts), dtype=W_dec.dtype, device=W_dec.device)
    out = {name: np.zeros((len(conditions), task.n)) for name in PERFORMANCE_COLUMNS}
    batches = list(task.batches(cfg.batch_size or 32))
    with torch.inference_mode():
        for c, cond in enumerate(tqdm(conditions, desc="steering (reference)", leave=False, disable=not progress)):
            feats = torch.tensor(cond.features, dtype=torch.long, device=W_dec.device)

            def hook(x, hook, feats=feats, factor=cond.factor):
                first = first_steered(positions, x.shape[1], task.prefix_len)
                sel = x[:, first:]
                if mode is SteeringMode.negative:
                    push = (factor * scales_t[feats]).unsqueeze(-1) * W_dec[feats]  # [k, d]
                    new = sel - push.sum(0)
                else:
                    acts = sae.encode(sel)
                    edited = acts.clone()
                    edited[..., feats] = 0.0 if mode is SteeringMode.zero_ablate else means_t[feats]
                    new = sel + sae.decode(edited) - sae.decode(acts)  # the SAE error term is kept
                x = x.clone()
                x[:, first:] = new
                return x

            for idx, tokens in batches:
                logits = model.run_with_hooks(tokens.to(device), fwd_hooks=[(subject.hook_name, hook)])[:, -1]
                for name, value in task.performance(logits, idx).items():
                    out[name][c, idx] = value.cpu().numpy()
    return out


# ---- the engine ----------------------------------------------------------------------------------------

@dataclass
class _Group:
    """Prompts of one token length: cached residual at the hook and clean keys/values after it."""

    idx: np.ndarray  # global prompt indices [P]
    resid: torch.Tensor  # [P, T, d_model] at the hook
    first: int  # first steered position
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block L..: keys/values of positions < first
    fused_kv: list = None  # the same, as the fused blocks take them (``past``; rotated keys for the Llama tail)


class SteeringEngine:
    """Fast intervention engine (see the module docstring). Build once per (subject, task, config),
    then :meth:`run` any number of condition lists."""

    def __init__(self, subject, task, cfg, scales: np.ndarray, mean_acts: Optional[np.ndarray] = None):
        self.subject, self.task, self.cfg = subject, task, cfg
        self.mode = SteeringMode(cfg.mode)
        self.positions = SteeringPositions(cfg.positions)
        _needs_means(self.mode, mean_acts)
        if getattr(cfg, "batch_size", None) is not None and cfg.batch_size < 1:
            raise FeatsweepError(f"steering.batch_size={cfg.batch_size}: use a positive number of rows per forward, "
                                 "or null to batch by steering.token_budget.")
        if getattr(cfg, "token_budget", None) is not None and cfg.token_budget < 1:
            raise FeatsweepError(f"steering.token_budget={cfg.token_budget}: use a positive number of tokens per "
                                 "forward, or null to choose it from the model's shape.")
        model = subject.model
        mcfg = model.cfg
        if mcfg.positional_embedding_type == "shortformer":
            raise FeatsweepError("The fast steering engine does not support shortformer positional embeddings; "
                                 "use steering.engine=reference.")
        self.model, self.sae, self.layer = model, subject.sae, subject.layer
        self.device = _device(model)
        self.dtype = self.sae.W_dec.dtype
        self.scales = torch.as_tensor(np.asarray(scales, dtype=np.float64), dtype=self.dtype, device=self.device)
        self.mean_acts = None if mean_acts is None else torch.as_tensor(np.asarray(mean_acts), dtype=self.dtype, device=self.device)
        self.blocks = list(model.blocks)[self.layer:]
        # TransformerLens's Unembed makes W_U.T contiguous on every call (a d_vocab x d_model copy);
        # do it once. Same F.linear as TransformerLens, so the same numerics.
        self._W_U_t = model.unembed.W_U.T.contiguous()
        self._b_U = model.unembed.b_U
        self._kv_shortcut = _kv_shortcut_ok(mcfg)
        # GPT-2- and Llama-style blocks run as a few fused ops (same function; see fused_tail); others as TL blocks
        self._fused = fused_tail(model, self.blocks)
        self.fused = self._fused is not None
        self._logit_rows = max(1, LOGITS_BYTES // (4 * int(mcfg.d_vocab)))
        self.groups: list[_Group] = []
        lengths = task.lengths
        with torch.inference_mode():
            for length in np.unique(lengths):
                idx = np.flatnonzero(lengths == length)
                tokens = torch.stack([task.tokens[i] for i in idx]).to(self.device)
                first = first_steered(self.positions, int(length), task.prefix_len)
                step = rows_per_chunk(cfg, mcfg, int(length))
                resid = torch.cat([model(tokens[start:start + step], stop_at_layer=self.layer)
                                   for start in range(0, len(idx), step)])
                prefix_kv = self._clean_kv(tokens, resid, first)
                fused_kv = [blk.past(k, v) for blk, (k, v) in zip(self._fused, prefix_kv)] if self._fused else []
                self.groups.append(_Group(idx=idx, resid=resid, first=first, prefix_kv=prefix_kv, fused_kv=fused_kv))

    def _clean_kv(self, tokens: torch.Tensor, resid: torch.Tensor, first: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of positions ``< first`` in every block after the hook, from the clean run. They depend on
        those positions only (causal attention), so each distinct run of tokens before ``first`` is computed once:
        with ``positions=non_prefix`` all prompts share it (the few-shot prefix)."""
        if first == 0:
            return []
        _, rep, inverse = np.unique(tokens[:, :first].cpu().numpy(), axis=0, return_index=True, return_inverse=True)
        rep, inverse = torch.as_tensor(rep, device=self.device), torch.as_tensor(inverse.ravel(), device=self.device)
        step = rows_per_chunk(self.cfg, self.model.cfg, first)
        parts = []
        for start in range(0, len(rep), step):
            r = resid[rep[start:start + step], :first]
            kv = []
            for block in self.blocks:
                entry = TransformerLensKeyValueCacheEntry.init_cache_entry(self.model.cfg, self.device, r.shape[0])
                r = block(r, past_kv_cache_entry=entry)
                kv.append((entry.past_keys, entry.past_values))
            parts.append(kv)
        return [(torch.cat([p[b][0] for p in parts])[inverse], torch.cat([p[b][1] for p in parts])[inverse])
                for b in range(len(self.blocks))]

    # -- one chunk of rows ----------------------------------------------------------------------------

    def _tail(self, x: torch.Tensor, group: _Group, p_rows: torch.Tensor) -> torch.Tensor:
        """Run positions ``group.first..T-1`` of ``x [R, T-first, d]`` through blocks L.. and return
        the final position's residual ``[R, d_model]``."""
        n = len(self.blocks)
        if self._fused is not None:
            for b, block in enumerate(self._fused):
                past_k = past_v = None
                if group.fused_kv:
                    past_k, past_v = group.fused_kv[b][0][p_rows], group.fused_kv[b][1][p_rows]
                x = block(x, past_k, past_v, last_only=b == n - 1)
            return x[:, -1]
        for b, block in enumerate(self.blocks):
            past_k = past_v = None
            if group.prefix_kv:
                past_k = group.prefix_kv[b][0][p_rows]
                past_v = group.prefix_kv[b][1][p_rows]
            if b == n - 1 and x.shape[1] > 1 and self._kv_shortcut:
                # Last block: only the final position's output matters; earlier positions give keys/values.
                h = block.ln1(x[:, :-1])
                _, k, v = block.attn.calculate_qkv_matrices(h, h, h)
                past_k = k if past_k is None else torch.cat([past_k, k], 1)
                past_v = v if past_v is None else torch.cat([past_v, v], 1)
                x = x[:, -1:]
            entry = None
            if past_k is not None:
                entry = TransformerLensKeyValueCacheEntry(past_keys=past_k, past_values=past_v, frozen=True)
            x = block(x, past_kv_cache_entry=entry)
        return x[:, -1]

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """``ln_final`` + unembed of final-position residuals ``[R, d_model]`` -> ``[R, d_vocab]``."""
        if self.model.cfg.normalization_type is not None:
            last = self.model.ln_final(last.unsqueeze(1)).squeeze(1)
        logits = torch.nn.functional.linear(last, self._W_U_t, self._b_U)
        softcap = getattr(self.model.cfg, "output_logits_soft_cap", -1.0)
        if softcap is not None and softcap > 0:
            logits = softcap * torch.tanh(logits / softcap)
        return logits

    def _plan(self, conditions: list[Condition]):
        """Padded feature index [C, k] with a validity mask, the union of features and per-slot coefficients."""
        kmax = max(len(c.features) for c in conditions)
        feats = torch.zeros(len(conditions), kmax, dtype=torch.long)
        valid = torch.zeros(len(conditions), kmax, dtype=self.dtype)
        factors = torch.tensor([c.factor for c in conditions], dtype=torch.float64)
        for c, cond in enumerate(conditions):
            feats[c, : len(cond.features)] = torch.tensor(cond.features)
            valid[c, : len(cond.features)] = 1.0
        union, inverse = torch.unique(feats, return_inverse=True)  # slot -> column of the union
        return feats.to(self.device), inverse.to(self.device), valid.to(self.device), factors, union.to(self.device)

    def _acts(self, resid: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
        """SAE activations of the union's features ``[P, T, U]``, computed in chunks of prompts."""
        parts = []
        step = rows_per_chunk(self.cfg, self.model.cfg, resid.shape[1])
        for start in range(0, resid.shape[0], step):
            parts.append(self.sae.encode(resid[start:start + step])[..., union])
        return torch.cat(parts)

    def run(self, conditions: list[Condition], progress: bool = True) -> dict[str, np.ndarray]:
        """Task performance under each condition: ``metric -> [C, n_prompts]``. Identical conditions
        are computed once."""
        if not conditions:
            return {name: np.zeros((0, self.task.n)) for name in PERFORMANCE_COLUMNS}
        _check_conditions(conditions, self.subject.d_sae)
        unique = list(dict.fromkeys(conditions))
        where = {cond: i for i, cond in enumerate(unique)}
        out = self._run_unique(unique, progress)
        back = np.array([where[c] for c in conditions])
        return {name: value[back] for name, value in out.items()}

    def deltas(self, x: torch.Tensor, group: _Group, c_rows: torch.Tensor, p_rows: torch.Tensor, plan, acts) -> torch.Tensor:
        """The change each row's condition makes to ``x`` on the steered positions ``[R, T-first, d]``."""
        feats, inverse, valid, factors, union = plan
        W = self.sae.W_dec
        f_rows = feats[c_rows]  # [R, k]
        d_rows = W[f_rows]  # [R, k, d]
        v_rows = valid[c_rows]  # [R, k]
        if self.mode is SteeringMode.negative:
            coef = -(factors.to(self.device, self.dtype)[c_rows].unsqueeze(-1) * self.scales[f_rows]) * v_rows  # [R, k]
            return (coef.unsqueeze(1) @ d_rows).expand(-1, x.shape[1], -1)  # [R, T', d]
        a = acts[p_rows][:, group.first:]  # [R, T', U]
        cols = inverse[c_rows]  # [R, k]
        a_sel = torch.gather(a, 2, cols.unsqueeze(1).expand(-1, a.shape[1], -1))  # [R, T', k]
        if self.mode is SteeringMode.zero_ablate:
            coef = -a_sel
        else:
            coef = self.mean_acts[f_rows].unsqueeze(1) - a_sel
        return (coef * v_rows.unsqueeze(1)) @ d_rows  # [R, T', d]

    @torch.inference_mode()
    def _run_unique(self, conditions: list[Condition], progress: bool) -> dict[str, np.ndarray]:
        C = len(conditions)
        out = {name: np.zeros((C, self.task.n)) for name in PERFORMANCE_COLUMNS}
        plan = self._plan(conditions)
        work = []
        for g in self.groups:
            P = len(g.idx)
            rows = rows_per_chunk(self.cfg, self.model.cfg, g.resid.shape[1] - g.first)
            p_step = min(P, rows)
            c_step = max(1, rows // p_step)
            for p0 in range(0, P, p_step):
                for c0 in range(0, C, c_step):
                    work.append((g, c0, min(C, c0 + c_step), p0, min(P, p0 + p_step)))
        acts_cache: dict[int, torch.Tensor] = {}
        for g, c0, c1, p0, p1 in tqdm(work, desc="steering", leave=False, disable=not progress):
            acts = None
            if self.mode is not SteeringMode.negative:
                if id(g) not in acts_cache:
                    acts_cache[id(g)] = self._acts(g.resid, plan[4])
                acts = acts_cache[id(g)]
            c_rows = torch.arange(c0, c1, device=self.device).repeat_interleave(p1 - p0)
            p_rows = torch.arange(p0, p1, device=self.device).repeat(c1 - c0)
            x = g.resid[p_rows, g.first:]  # gathered copy [R, T-first, d]
            x = x + self.deltas(x, g, c_rows, p_rows, plan, acts).to(x.dtype)
            last = self._tail(x, g, p_rows)
            idx = g.idx[p_rows.cpu().numpy()]
            cr = c_rows.cpu().numpy()
            for s0 in range(0, len(idx), self._logit_rows):  # logits [rows, d_vocab] in bounded blocks
                s1 = s0 + self._logit_rows
                perf = self.task.performance(self._logits(last[s0:s1]), idx[s0:s1])
                for name, value in perf.items():
                    out[name][cr[s0:s1], idx[s0:s1]] = value.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def linear_preview(self, conditions: list[Condition], resid_grad: list[np.ndarray]) -> np.ndarray:
        """First-order estimate of each condition's change of the task metric ``m`` (``task.logit_diff``):
        ``dm ~= sum over steered positions of delta_x . grad_x m`` with ``grad_x m`` from the attribution
        pass (``attrs.resid_grad``, per prompt ``[T_p, d_model]``). Returns ``[C, n_prompts]``."""
        _check_conditions(conditions, self.subject.d_sae)
        out = np.zeros((len(conditions), self.task.n))
        if not conditions:
            return out
        plan = self._plan(conditions)
        C = len(conditions)
        for g in self.groups:
            acts = None if self.mode is SteeringMode.negative else self._acts(g.resid, plan[4])
            grad = torch.as_tensor(np.stack([np.asarray(resid_grad[i]) for i in g.idx]), dtype=self.dtype,
                                   device=self.device)[:, g.first:]  # [P, T', d]
            P = len(g.idx)
            c_step = max(1, rows_per_chunk(self.cfg, self.model.cfg, g.resid.shape[1] - g.first) // P)
            for c0 in range(0, C, c_step):
                c1 = min(C, c0 + c_step)
                c_rows = torch.arange(c0, c1, device=self.device).repeat_interleave(P)
                p_rows = torch.arange(P, device=self.device).repeat(c1 - c0)
                x = g.resid[p_rows, g.first:]
                delta = self.deltas(x, g, c_rows, p_rows, plan, acts)
                est = (delta * grad[p_rows]).sum((1, 2)).double().cpu().numpy()
                out[c_rows.cpu().numpy(), g.idx[p_rows.cpu().numpy()]] = est
        return out


def run_conditions(subject, task, cfg, scales, conditions, mean_acts=None, progress: bool = True,
                   engine: Optional[SteeringEngine] = None) -> dict[str, np.ndarray]:
    """Dispatch on ``steering.engine``: ``fast`` (the engine; pass one already built to reuse its cache)
    or ``reference`` (one hooked pass per condition)."""
    if SteeringEngineKind(cfg.engine) is SteeringEngineKind.reference:
        return reference_run(subject, task, cfg, scales, conditions, mean_acts, progress=progress)
    engine = engine or SteeringEngine(subject, task, cfg, scales, mean_acts)
    return engine.run(conditions, progress=progress)
