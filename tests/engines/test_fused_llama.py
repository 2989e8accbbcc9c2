"""The fused Llama tail against TransformerLens's own blocks (float32, frozen unrotated key/value cache) on
random Llama-shaped blocks: grouped and full key/value heads, partial and GPT-J-style rotary, biases."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from featsweep.engines.fused_llama import FusedLlamaBlock, fused_llama_ok
from featsweep.engines.fused_llama import fused_tail
from helpers import llama_subject

SHAPES = {
    "gqa": dict(n_heads=4, n_key_value_heads=2, rotary_dim=12, rotary_adjacent_pairs=False),
    "mha_partial_rotary": dict(n_heads=4, n_key_value_heads=None, rotary_dim=8, rotary_adjacent_pairs=False),
    "mqa_adjacent_pairs": dict(n_heads=4, n_key_value_heads=1, rotary_dim=12, rotary_adjacent_pairs=True),
}


def llama_model(shape: str, seed: int = 0, biases: bool = True) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=48, d_head=12, d_mlp=64, d_vocab=50, n_ctx=32, act_fn="silu",
                                  gated_mlp=True, normalization_type="RMS", final_rms=True,
                                  positional_embedding_type="rotary", rotary_base=10000, seed=seed, device="cpu",
                                  original_architecture="LlamaForCausalLM", **SHAPES[shape])
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # TransformerLens starts biases at 0 and RMSNorm weights at 1: make every term count
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith(("b_", "_b_", "w") if biases else "w"):
                p.add_(0.3 * torch.randn_like(p))
    return model


def tl_block(block, x, past_k=None, past_v=None):
    entry = None if past_k is None else TransformerLensKeyValueCacheEntry(past_keys=past_k, past_values=past_v, frozen=True)
    return block(x, past_kv_cache_entry=entry)


@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no_biases"])  # Llama has none: skipped passes
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("past,q", [(0, 7), (5, 4), (9, 1)])
def test_a_fused_block_equals_transformer_lens_block(shape, past, q, biases):
    model = llama_model(shape, biases=biases)
    assert fused_llama_ok(model)
    torch.manual_seed(1)
    R, d = 3, model.cfg.d_model
    for block in model.blocks:
        fused = FusedLlamaBlock(block, model.cfg)
        assert (fused.b_O is None) != biases and (fused.b_in is None) != biases
        prefix = torch.randn(R, past, d)
        x = torch.randn(R, q, d)
        past_k = past_v = None
        if past:  # the clean prefix's keys/values as TransformerLens caches them (unrotated)
            entry = TransformerLensKeyValueCacheEntry.init_cache_entry(model.cfg, "cpu", R)
            block(prefix, past_kv_cache_entry=entry)
            past_k, past_v = entry.past_keys.clone(), entry.past_values.clone()
        with torch.inference_mode():
            want = tl_block(block, x, past_k, past_v)
            got = fused(x, *fused.past(past_k, past_v))
            last = fused(x, *fused.past(past_k, past_v), last_only=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last, want[:, -1:], atol=1e-5, rtol=1e-5)
        assert (want - x).abs().max() > 1e-2  # the block does something


def test_a_whole_fused_tail_equals_the_model_forward():
    model = llama_model("gqa", seed=3)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 11))
    with torch.inference_mode():
        x = model(tokens, stop_at_layer=0)
        want = model(tokens, stop_at_layer=model.cfg.n_layers)
        for block in fused_tail(model, list(model.blocks)):
            x = block(x, None, None)
    torch.testing.assert_close(x, want, atol=1e-5, rtol=1e-5)


def test_the_fused_llama_tail_is_chosen_only_for_blocks_it_computes():
    model = llama_subject().model
    assert fused_llama_ok(model) and isinstance(fused_tail(model, list(model.blocks))[0], FusedLlamaBlock)
    for change in (dict(positional_embedding_type="standard"), dict(gated_mlp=False), dict(normalization_type="LN"),
                   dict(use_dynamic_ntk_rope=True), dict(ungroup_grouped_query_attention=True)):
        other = llama_subject().model
        for key, value in change.items():
            setattr(other.cfg, key, value)
        assert not fused_llama_ok(other), change
