"""How the steering engine runs the layers after the hook: the token budget that sets its batch size, a
fused tail for plain pre-norm blocks, and the check for the frozen keys/values shortcut.

Everything here is an exact re-expression of TransformerLens's own blocks for the architectures it accepts
(tests compare it with TransformerLens blocks and with the plain reference hook); any other architecture
runs TransformerLens's blocks.
"""

from __future__ import annotations

from typing import Optional

import torch

_NO_KV_SHORTCUT_ARCHS = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM", "OLMoForCausalLM")


def _kv_shortcut_ok(mcfg) -> bool:
    """Whether the last block's keys/values can be computed as ``attn.calculate_qkv_matrices(ln1(x))``, as
    the block's own forward does: plain pre-norm blocks without per-head inputs or Q/K/V clamping.
    Other architectures run the last block on every recomputed position (still exact, a little slower)."""
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # pragma: no cover - older TransformerLens
        POST_NORM_ARCHITECTURES = ()
    arch = getattr(mcfg, "original_architecture", None)
    return not (arch in POST_NORM_ARCHITECTURES or arch in _NO_KV_SHORTCUT_ARCHS or mcfg.use_attn_in
                or mcfg.use_split_qkv_input or getattr(mcfg, "clip_qkv", None) is not None
                or getattr(mcfg, "use_normalization_before_and_after", False))


# ---- batching by tokens ------------------------------------------------------------------------------------

def auto_token_budget(mcfg) -> int:
    """Tokens (rows x recomputed positions) per forward through the tail, from the model's shape.

    The tail is a chain of ``[tokens, d_model] @ [d_model, k]`` matmuls; with few tokens per forward each
    weight matrix (28 MB per GPT-2 block) is streamed from memory for little work and the per-op overhead
    dominates. Measured on the shared 2-core machine (fused tail, token budgets 512..16,384, in one process):
    the organism (d_model 128) speeds up until ~8k tokens and is flat to 16k (5x faster than the old 128 rows);
    the GPT-2 shape speeds up until 6-12k tokens. The budget gives the widest activation
    ``[tokens, max(d_mlp, 3 d_model)]`` :data:`ACTIVATION_BYTES` (GPT-2 small: ~11k tokens; the organism: the
    16,384 cap), within [1,024, 16,384].
    """
    width = max(int(mcfg.d_mlp or 0), 3 * int(mcfg.d_model))
    return int(min(16384, max(1024, ACTIVATION_BYTES // (4 * width))))


ACTIVATION_BYTES = 128 * 2**20


def rows_per_chunk(cfg, mcfg, positions: int) -> int:
    """Rows (condition x prompt) per forward when each row recomputes ``positions`` tokens:
    ``steering.batch_size`` when set, else ``steering.token_budget`` (or :func:`auto_token_budget`) / positions."""
    rows = getattr(cfg, "batch_size", None)
    if rows:
        return int(rows)
    budget = getattr(cfg, "token_budget", None) or auto_token_budget(mcfg)
    return max(1, int(budget) // max(1, int(positions)))


# ---- a fused tail for plain pre-norm blocks ------------------------------------------------------------------

_FUSED_ACTS = {
    # TransformerLens's gelu_new/gelu_fast are the tanh approximation written out in 5-7 elementwise passes;
    # F.gelu(approximate="tanh") is the same function in one pass (equal to float32 round-off).
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu": torch.nn.functional.gelu,
    "relu": torch.nn.functional.relu,
    "silu": torch.nn.functional.silu,
}


def _fused_ok(model) -> bool:
    """Whether every block is a plain TransformerLens pre-norm block (LayerNorm, standard causal attention
    with learned absolute positions, non-gated MLP) that :class:`_FusedBlock` computes exactly."""
    c = model.cfg
    if not _kv_shortcut_ok(c) or c.dtype not in (torch.float32, torch.float64):
        return False
    if (c.normalization_type not in ("LN", "LNPre") or c.positional_embedding_type != "standard"
            or c.attention_dir != "causal" or c.act_fn not in _FUSED_ACTS or c.gated_mlp or c.attn_only
            or c.parallel_attn_mlp or c.use_local_attn or c.use_attn_result or c.load_in_4bit
            or c.num_experts is not None or c.n_key_value_heads not in (None, c.n_heads)
            or getattr(c, "use_qk_norm", False) or getattr(c, "use_logn_attn", False)
            or getattr(c, "use_attention_sinks", False) or (getattr(c, "attn_scores_soft_cap", -1.0) or -1.0) > 0):
        return False
    norm = ("LayerNorm", "LayerNormPre")
    return all(type(b).__name__ == "TransformerBlock" and type(b.attn).__name__ == "Attention"
               and type(b.mlp).__name__ == "MLP" and type(b.ln1).__name__ in norm and type(b.ln2).__name__ in norm
               for b in model.blocks)


class _FusedBlock:
    """One TransformerLens block as a few large fused ops: ``F.layer_norm``, one ``addmm`` for Q, K and V,
    ``scaled_dot_product_attention``, ``addmm`` for the output and the MLP, one fused activation. The same
    function as the block's own forward (TransformerLens writes LayerNorm and gelu_new as 5-7 elementwise
    passes each, which cost ~40% of the tail at GPT-2 shape), without hook points."""

    def __init__(self, block, cfg):
        attn, mlp = block.attn, block.mlp
        H, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head

        def flat(w):  # [H, d_model, d_head] -> [d_model, H * d_head]
            return w.detach().permute(1, 0, 2).reshape(d, H * dh)

        self.H, self.dh, self.d, self.eps = H, dh, d, cfg.eps
        self.W_qkv = torch.cat([flat(attn.W_Q), flat(attn.W_K), flat(attn.W_V)], dim=1).contiguous()
        self.b_qkv = torch.cat([attn.b_Q.detach().reshape(-1), attn.b_K.detach().reshape(-1),
                                attn.b_V.detach().reshape(-1)]).contiguous()
        self.W_O = attn.W_O.detach().reshape(H * dh, d).contiguous()
        self.b_O = attn.b_O.detach()
        self.scale = 1.0 / float(attn.attn_scale)
        self.W_in, self.b_in = mlp.W_in.detach().contiguous(), mlp.b_in.detach()
        self.W_out, self.b_out = mlp.W_out.detach().contiguous(), mlp.b_out.detach()
        self.act = _FUSED_ACTS[cfg.act_fn]
        self.ln1 = (getattr(block.ln1, "w", None), getattr(block.ln1, "b", None))
        self.ln2 = (getattr(block.ln2, "w", None), getattr(block.ln2, "b", None))

    def _norm(self, x, wb):
        return torch.nn.functional.layer_norm(x, (self.d,), wb[0], wb[1], self.eps)

    def past(self, keys: Optional[torch.Tensor], values: Optional[torch.Tensor]):
        """The clean prefix's keys/values as this block takes them: as TransformerLens caches them."""
        return keys, values

    def __call__(self, x: torch.Tensor, past_k: Optional[torch.Tensor], past_v: Optional[torch.Tensor],
                 last_only: bool = False) -> torch.Tensor:
        """``x [R, q, d]`` (positions after the ``past`` ones) -> the block's output ``[R, q, d]``, or
        ``[R, 1, d]`` for the final position only (earlier positions then only give keys/values)."""
        R, q, d = x.shape
        H, dh = self.H, self.dh
        qkv = torch.addmm(self.b_qkv, self._norm(x, self.ln1).reshape(R * q, d), self.W_qkv).view(R, q, 3, H, dh)
        queries, keys, values = qkv.unbind(2)  # [R, q, H, dh]
        if past_k is not None:
            keys, values = torch.cat([past_k, keys], 1), torch.cat([past_v, values], 1)
        if last_only and q > 1:
            queries, x, q = queries[:, -1:], x[:, -1:], 1
        k_len = keys.shape[1]
        mask = None
        if q > 1:  # causal: query i (absolute position k_len - q + i) sees keys 0..k_len - q + i
            mask = (torch.arange(k_len, device=x.device)[None, :]
                    <= torch.arange(k_len - q, k_len, device=x.device)[:, None])
        z = torch.nn.functional.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask, scale=self.scale)
        z = z.transpose(1, 2).reshape(R * q, H * dh)
        x = x + torch.addmm(self.b_O, z, self.W_O).view(R, q, d)
        h = self.act(torch.addmm(self.b_in, self._norm(x, self.ln2).reshape(R * q, d), self.W_in))
        return x + torch.addmm(self.b_out, h, self.W_out).view(R, q, d)
