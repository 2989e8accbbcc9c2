"""The steering engine's fused tail for Llama-style blocks (SmolLM2, Llama, Mistral-like): RMSNorm, rotary
positions, grouped-query attention and a gated MLP, as a few large fused operations.

Per block: ``F.rms_norm``; one ``addmm`` for Q, K and V (K and V with the model's key/value heads only);
rotary positions from the attention's own ``rotary_cos``/``rotary_sin`` tables, queries and new keys in one
rotation; ``scaled_dot_product_attention`` with the query heads that share a key/value head stacked along the query
axis (no copy of K and V per query head); ``addmm`` for the output into the residual; one ``mm`` for the gate and
input projections of the MLP, its activation and product in place, ``addmm`` for its output. All-zero biases (Llama
has none) are not added. The same function as TransformerLens's ``TransformerBlock`` forward with a frozen key/value
cache entry: TransformerLens caches keys *unrotated*; :meth:`FusedLlamaBlock.past` rotates the clean prefix's keys
once at their absolute positions, so a forward rotates only its own positions (the prefix is most of the keys with
``steering.positions=non_prefix``: 47 of ~55 on ``experiment=smollm2``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from featsweep.engines.fused_tail import _FUSED_ACTS, _FusedBlock, _fused_ok, _kv_shortcut_ok

_NORMS = ("RMSNorm", "RMSNormPre")


def fused_llama_ok(model) -> bool:
    """Whether every block is a TransformerLens pre-norm Llama-style block that :class:`FusedLlamaBlock`
    computes exactly (RMSNorm, causal rotary attention with grouped or full key/value heads, gated MLP)."""
    c = model.cfg
    if not _kv_shortcut_ok(c) or c.dtype not in (torch.float32, torch.float64):
        return False
    if (c.normalization_type not in ("RMS", "RMSPre") or c.positional_embedding_type != "rotary"
            or c.attention_dir != "causal" or c.act_fn not in _FUSED_ACTS or not c.gated_mlp or c.attn_only
            or c.parallel_attn_mlp or c.use_local_attn or c.use_attn_result or c.load_in_4bit
            or c.num_experts is not None or getattr(c, "use_qk_norm", False) or getattr(c, "use_logn_attn", False)
            or getattr(c, "use_attention_sinks", False) or getattr(c, "use_dynamic_ntk_rope", False)
            or getattr(c, "ungroup_grouped_query_attention", False)
            or (getattr(c, "attn_scores_soft_cap", -1.0) or -1.0) > 0 or c.is_layer_norm_activation()):
        return False
    return all(type(b).__name__ == "TransformerBlock" and type(b.attn).__name__ in ("Attention", "GroupedQueryAttention")
               and type(b.mlp).__name__ == "GatedMLP" and type(b.ln1).__name__ in _NORMS
               and type(b.ln2).__name__ in _NORMS for b in model.blocks)


def _bias(b: torch.Tensor) -> Optional[torch.Tensor]:
    """None for an all-zero bias (Llama has none): adding zeros to the residual changes nothing but costs a pass."""
    return None if not bool(b.detach().any()) else b.detach()


class FusedLlamaBlock:
    """One TransformerLens Llama-style block as a few large fused ops (see the module docstring)."""

    def __init__(self, block, cfg):
        attn, mlp = block.attn, block.mlp
        H, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        kv = cfg.n_key_value_heads or H
        # GroupedQueryAttention keeps its own key/value weights as _W_K/_W_V (W_K repeats them per query head)
        W_K, W_V = getattr(attn, "_W_K", attn.W_K), getattr(attn, "_W_V", attn.W_V)
        b_K, b_V = getattr(attn, "_b_K", attn.b_K), getattr(attn, "_b_V", attn.b_V)

        def flat(w):  # [heads, d_model, d_head] -> [d_model, heads * d_head]
            return w.detach().permute(1, 0, 2).reshape(d, -1)

        self.H, self.kv, self.dh, self.d = H, kv, dh, d
        self.W_qkv = torch.cat([flat(attn.W_Q), flat(W_K), flat(W_V)], dim=1).contiguous()
        self.b_qkv = torch.cat([attn.b_Q.detach().reshape(-1), b_K.detach().reshape(-1), b_V.detach().reshape(-1)])
        self.W_O = attn.W_O.detach().reshape(H * dh, d).contiguous()
        self.b_O = _bias(attn.b_O)
        self.scale = 1.0 / float(attn.attn_scale)
        self.attn = attn  # for its rotary tables (extended on demand, as its own forward does)
        self.rotary_dim = int(cfg.rotary_dim or dh)
        self.adjacent = bool(cfg.rotary_adjacent_pairs)
        self._signed_sin = None
        self.d_mlp = int(cfg.d_mlp)
        self.W_gate_in = torch.cat([mlp.W_gate.detach(), mlp.W_in.detach()], dim=1).contiguous()  # [d, 2 d_mlp]
        self.b_in, self.W_out, self.b_out = _bias(mlp.b_in), mlp.W_out.detach().contiguous(), _bias(mlp.b_out)
        self.act = _FUSED_ACTS[cfg.act_fn]
        self.ln1 = (getattr(block.ln1, "w", None), block.ln1.eps)
        self.ln2 = (getattr(block.ln2, "w", None), block.ln2.eps)

    def _norm(self, x, w_eps):
        return F.rms_norm(x, (self.d,), w_eps[0], w_eps[1])

    def _tables(self, start: int, stop: int):
        """cos and signed sin of positions ``start..stop-1`` as ``[T, 1, rotary_dim]``: TransformerLens rotates
        ``x * cos + flip(x) * sin`` with ``flip`` negating one element of each pair; the sign sits in the table
        here (exact), so a rotation is one swap and two multiplies."""
        if stop > self.attn.rotary_cos.shape[0]:
            self.attn._extend_rotary_embeddings(max(stop, 2 * self.attn.rotary_cos.shape[0]))
        if self._signed_sin is None or self._signed_sin.shape[0] != self.attn.rotary_sin.shape[0]:
            sin = self.attn.rotary_sin.clone()
            r = self.rotary_dim
            if self.adjacent:  # GPT-J: pairs (0, 1), (2, 3), ...; the first of each pair gets -sin
                sin[:, 0:r:2] = -sin[:, 0:r:2]
            else:  # GPT-NeoX / Llama: pairs (i, i + r/2); the first half gets -sin
                sin[:, : r // 2] = -sin[:, : r // 2]
            self._signed_sin = sin
        return self.attn.rotary_cos[start:stop, None, :], self._signed_sin[start:stop, None, :]

    def _rotate(self, x, start: int):
        """TransformerLens's apply_rotary for positions ``start..start+T-1`` of ``x [R, T, heads, d_head]``."""
        r = self.rotary_dim
        cos, sin = self._tables(start, start + x.shape[1])
        x_rot, x_pass = x[..., :r], x[..., r:]
        if self.adjacent:
            swapped = torch.stack([x_rot[..., 1::2], x_rot[..., ::2]], dim=-1).flatten(-2)
        else:
            swapped = torch.cat([x_rot[..., r // 2:], x_rot[..., : r // 2]], dim=-1)
        rotated = torch.addcmul(x_rot * cos, swapped, sin)
        return rotated if x_pass.shape[-1] == 0 else torch.cat([rotated, x_pass], dim=-1)

    def past(self, keys: Optional[torch.Tensor], values: Optional[torch.Tensor]):
        """The clean prefix's keys/values as this block takes them: TransformerLens caches keys unrotated;
        here they are rotated once, at their positions ``0..``, instead of again in every forward."""
        return (None, None) if keys is None else (self._rotate(keys, 0), values)

    def __call__(self, x: torch.Tensor, past_k: Optional[torch.Tensor], past_v: Optional[torch.Tensor],
                 last_only: bool = False) -> torch.Tensor:
        """``x [R, q, d]`` (positions after the ``past`` ones, whose keys come from :meth:`past`) -> the block's
        output ``[R, q, d]``, or ``[R, 1, d]`` for the final position only."""
        R, q, d = x.shape
        H, kv, dh = self.H, self.kv, self.dh
        n_past = 0 if past_k is None else past_k.shape[1]
        qkv = torch.addmm(self.b_qkv, self._norm(x, self.ln1).reshape(R * q, d), self.W_qkv)
        # queries and the new keys share their positions: one rotation for both
        rotated = self._rotate(qkv[:, : (H + kv) * dh].view(R, q, H + kv, dh), n_past)
        queries, keys = rotated[:, :, :H], rotated[:, :, H:]
        values = qkv[:, (H + kv) * dh:].view(R, q, kv, dh)
        if past_k is not None:
            keys, values = torch.cat([past_k, keys], 1), torch.cat([past_v, values], 1)
        k_len = keys.shape[1]
        if last_only and q > 1:
            queries, x, q = queries[:, -1:], x[:, -1:], 1
        # query head h reads key/value head h // g: stack a group's g query heads along the query axis
        g = H // kv
        queries = queries.reshape(R, q, kv, g, dh).permute(0, 2, 3, 1, 4).reshape(R, kv, g * q, dh)
        mask = None
        if q > 1:  # causal: query i (absolute position k_len - q + i) sees keys 0..k_len - q + i
            mask = (torch.arange(k_len, device=x.device)[None, :]
                    <= torch.arange(k_len - q, k_len, device=x.device)[:, None]).repeat(g, 1)
        z = F.scaled_dot_product_attention(queries, keys.transpose(1, 2), values.transpose(1, 2),
                                           attn_mask=mask, scale=self.scale)  # [R, kv, g * q, dh]
        z = z.view(R, kv, g, q, dh).permute(0, 3, 1, 2, 4).reshape(R * q, H * dh)
        x = torch.addmm(x.reshape(R * q, d), z, self.W_O)
        if self.b_O is not None:
            x += self.b_O
        gate_in = torch.mm(self._norm(x, self.ln2), self.W_gate_in)
        h = self.act(gate_in[:, : self.d_mlp])  # the gated MLP in place: these are the tail's widest tensors
        h *= gate_in[:, self.d_mlp:]
        if self.b_in is not None:
            h += self.b_in
        x = torch.addmm(x, h, self.W_out)
        if self.b_out is not None:
            x += self.b_out
        return x.view(R, q, d)


def fused_tail(model, blocks) -> Optional[list]:
    """The fused tail for ``blocks`` when the model's architecture has one (GPT-2-style blocks from
    :mod:`featsweep.engines.fused_tail`, Llama-style blocks from this module), else None (the engine runs
    TransformerLens's blocks)."""
    if _fused_ok(model):
        return [_FusedBlock(b, model.cfg) for b in blocks]
    if fused_llama_ok(model):
        return [FusedLlamaBlock(b, model.cfg) for b in blocks]
    return None
