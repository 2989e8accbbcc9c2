"""Steering benchmark: the plain reference (one hooked full forward per condition) against the engine.

Random weights of the GPT-2 small shape (12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257,
gelu_new, LayerNorm) with a random 768 -> 24576 SAE at blocks.7.hook_resid_pre; a task of random
token ids (BOS + 11 tokens); single-feature conditions in negative mode, gen_max-like random scales.

    python benchmarks/steering.py                      # 100 prompts, 50 conditions per approach
    python benchmarks/steering.py --prompts 4 --conditions 2 --layers 2 --vocab 1000   # smoke test
    python benchmarks/steering.py --model smollm2 --reference-conditions 3   # SmolLM2-135M (`make smollm2`) with its
                                # shipped SAE, on the few-shot athletes prompts of experiment=smollm2; the reference
                                # (~15 s per condition there) timed on 3 of the 50 conditions

With ``--model smollm2`` the subject and task are the real ones of ``experiment=smollm2`` (30 Llama blocks, SAE at
layer 12, 100 prompts of ~60 tokens with a 4-shot prefix); the engine runs the fused Llama tail there
(``featsweep.engines.fused_llama``). ``speedup_last`` is measured as for GPT-2; the preset's own positions
(non_prefix: the ~11 positions after the shared prefix) are reported on an extra line.

Wherever the engine has a fused tail, the same engine (same cached clean pass, same rows per forward) is also run
on TransformerLens's own blocks, side by side in this process: ``speedup_vs_tl_blocks`` (positions=all; and
``speedup_vs_tl_blocks_non_prefix`` for smollm2) is its run time over the fused tail's. ``ceiling_vs_tl_blocks`` is
the most that ratio can be: 1 / the share of the TransformerLens blocks' CPU time spent in matmuls (torch profiler,
two conditions), which a fused tail must still do; ``fused_matmul_share`` is the same share for the fused tail
(near 1: the tail is bound by its matmuls).

Prints the speed-up for positions=all and positions=last, the engine's achieved GFLOP/s (analytic
count of the matmuls the engine does: blocks L.. + the final unembed; for positions=all) against a
float32 matmul peak measured in the same process (at the start and again just before each engine run, since
the machine may be shared; the JSON reports the best peak, the conservative choice), and, as its last line, JSON:
{"speedup_all": x, "speedup_last": y, "engine_gflops": g, "matmul_peak_gflops": p, "speedup_vs_tl_blocks": s}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featsweep.config import Contrast, SteeringConfig, SteeringPositions  # noqa: E402
from featsweep.engines.intervention import Condition, SteeringEngine, first_steered, reference_run  # noqa: E402
from featsweep.engines.fused_tail import auto_token_budget, rows_per_chunk  # noqa: E402
from featsweep.subjects.loading import Subject  # noqa: E402
from featsweep.stages.task import Task  # noqa: E402


def build(args) -> tuple[Subject, Task]:
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=args.layers, d_model=args.d_model, n_heads=args.d_model // 64, d_head=64, d_mlp=4 * args.d_model,
        d_vocab=args.vocab, n_ctx=1024, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel", device="cpu", seed=0,
    )
    model = HookedTransformer(cfg).eval()
    sae = StandardSAE(StandardSAEConfig(d_in=args.d_model, d_sae=args.d_sae)).eval()
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True)
    for p in list(model.parameters()) + list(sae.parameters()):
        p.requires_grad_(False)
    layer = min(7, args.layers - 1)
    subject = Subject(model=model, sae=sae, hook_name=f"blocks.{layer}.hook_resid_pre", layer=layer, identity="bench")
    gen = torch.Generator().manual_seed(1)
    bos = args.vocab - 1
    tokens = [torch.cat([torch.tensor([bos]), torch.randint(0, args.vocab - 1, (args.length - 1,), generator=gen)])
              for _ in range(args.prompts)]
    answers = torch.randint(0, args.vocab - 1, (8,), generator=gen).unique()
    correct = answers[torch.randint(0, len(answers), (args.prompts,), generator=gen)]
    incorrect = answers[(torch.searchsorted(answers, correct) + 1) % len(answers)]
    frame = pd.DataFrame({"prompt": [f"p{i}" for i in range(args.prompts)], "correct_id": correct.numpy(),
                          "incorrect_id": incorrect.numpy()})
    task = Task(frame=frame, tokens=tokens, correct_ids=correct, incorrect_ids=incorrect, answer_ids=answers,
                contrast=Contrast.random_other, prefix_len=1)
    return subject, task


def smollm2(args) -> tuple[Subject, Task]:
    """The subject and task of experiment=smollm2 (needs `make smollm2`)."""
    from dataclasses import replace

    from hydra import compose, initialize_config_dir

    from featsweep.config import checked, register_configs
    from featsweep.subjects.loading import load_subject
    from featsweep.stages.task import load_task

    register_configs()
    conf = Path(__file__).resolve().parents[1] / "featsweep" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = checked(compose(config_name="config", overrides=["experiment=smollm2", "device=cpu"]))
    subject = load_subject(cfg)
    return subject, load_task(replace(cfg.task, limit=args.prompts), subject.model, seed=0)


def engine_flops(mcfg, layer: int, length: int, first: int, rows: int) -> float:
    """Analytic FLOPs (2 per multiply-add) of the engine's matmuls for ``rows`` condition x prompt rows."""
    d, h, dh, dm, V, n = mcfg.d_model, mcfg.n_heads, mcfg.d_head, mcfg.d_mlp, mcfg.d_vocab, mcfg.n_layers
    kv = mcfg.n_key_value_heads or h  # grouped-query attention: fewer key/value heads
    mlp = 3 if mcfg.gated_mlp else 2  # a gated MLP has a third d x d_mlp matrix
    q = length - first  # positions recomputed per row

    def full(pos: int, keys: int) -> float:  # one block, `pos` query positions attending to `keys` keys
        return 2 * pos * (d * dh * (2 * h + 2 * kv) + mlp * d * dm) + 2 * 2 * pos * keys * h * dh

    per_row = 0.0
    for b in range(layer, n):
        if b < n - 1 or q == 1:
            per_row += full(q, length)
        else:  # last block: q/k/v projections of the earlier positions, a full block for the last one
            per_row += 2 * (q - 1) * d * dh * (h + 2 * kv) + full(1, length)
    per_row += 2 * d * V  # unembed of the final position
    return per_row * rows


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_fraction(fn) -> float:
    """The share of ``fn``'s CPU time (torch profiler, self time per op) spent in matrix products."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--conditions", type=int, default=50)
    parser.add_argument("--length", type=int, default=12, help="tokens per prompt, BOS included")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch-size", type=int, default=SteeringConfig.batch_size,
                        help="engine rows (conditions x prompts) per forward (steering.batch_size; default: the "
                             "config's, null = from the token budget)")
    parser.add_argument("--token-budget", type=int, default=SteeringConfig.token_budget,
                        help="rows x recomputed positions per forward (steering.token_budget; default: the config's, "
                             "null = chosen from the model's shape)")
    parser.add_argument("--reference-conditions", type=positive_int, default=None,
                        help="time the reference on the first N conditions only (its cost is one full forward per "
                             "condition, so per condition it is the same; SmolLM2 at the defaults: ~15 s each); the "
                             "speed-ups compare time per condition. Default: all")
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--model", choices=["gpt2-shape", "smollm2"], default="gpt2-shape")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    subject, task = build(args) if args.model == "gpt2-shape" else smollm2(args)
    d_sae = subject.d_sae
    rng = np.random.default_rng(0)
    scales = rng.uniform(1.0, 10.0, d_sae)
    feats = rng.choice(d_sae, size=args.conditions, replace=False)
    conditions = [Condition((int(f),), args.factor) for f in feats]
    mcfg = subject.model.cfg
    print(f"model: {args.model}, {mcfg.n_layers} layers, d_model {mcfg.d_model}, vocab {mcfg.d_vocab}; SAE d_sae {d_sae} at "
          f"{subject.hook_name}; {task.n} prompts x {np.mean(task.lengths):.1f} tokens; {len(conditions)} conditions; "
          f"{torch.get_num_threads()} threads", flush=True)

    peak = matmul_peak()
    print(f"matmul peak (float32, 2048^3): {peak:.1f} GFLOP/s", flush=True)
    report, peaks = {}, [peak]
    for positions in ("all", "last") + (("non_prefix",) if args.model == "smollm2" else ()):
        cfg = SteeringConfig(mode="negative", scale="gen_max", positions=positions, factor=args.factor,
                             batch_size=args.batch_size, token_budget=args.token_budget)
        n_ref = min(len(conditions), args.reference_conditions or len(conditions))
        ref, t_ref = timed(lambda: reference_run(subject, task, cfg, scales, conditions[:n_ref]))
        t_ref *= len(conditions) / n_ref  # the reference's time for all conditions, from its time per condition
        peaks.append(matmul_peak())  # the machine is shared: also measure the peak next to the engine run
        engine, t_init = timed(lambda: SteeringEngine(subject, task, cfg, scales))
        eng, t_run = timed(lambda: engine.run(conditions, progress=False))
        t_tl = None
        if engine.fused:  # the same engine (same cache and rows) on TransformerLens's own blocks
            fused, engine._fused = engine._fused, None
            tl, t_tl = timed(lambda: engine.run(conditions, progress=False))
            # the fused tail does the same matmuls: its speed-up over these blocks is bounded by 1 / this share
            share = matmul_fraction(lambda: engine.run(conditions[:2], progress=False))
            engine._fused = fused
            fused_share = matmul_fraction(lambda: engine.run(conditions[:2], progress=False))
            print(f"positions={positions}: the fused tail spends {fused_share:.0%} of its time in matmuls", flush=True)
            print(f"positions={positions}: TransformerLens blocks spend {share:.0%} of their time in matmuls, so a tail doing "
                  f"the same matmuls at the same speed is at most {1 / share:.2f}x faster", flush=True)
            print(f"positions={positions}: engine run on TransformerLens blocks {t_tl:.2f} s, fused tail {t_run:.2f} s: "
                  f"{t_tl / t_run:.2f}x (max |logit_diff difference| "
                  f"{float(np.abs(tl['logit_diff'] - eng['logit_diff']).max()):.1e})", flush=True)
        firsts = [first_steered(SteeringPositions(positions), int(n), task.prefix_len) for n in task.lengths]
        q = int(max(task.lengths) - min(firsts))  # the longest group's recomputed positions
        print(f"positions={positions}: engine {'fused' if engine.fused else 'TransformerLens'} blocks, "
              f"{rows_per_chunk(cfg, mcfg, q)} rows x {q} positions per forward "
              f"(token budget {cfg.token_budget or auto_token_budget(mcfg)}{'' if cfg.token_budget else ', auto'})",
              flush=True)
        t_eng = t_init + t_run
        err = float(np.abs(ref["logit_diff"] - eng["logit_diff"][:n_ref]).max())
        flops = sum(engine_flops(mcfg, subject.layer, int(n), f, len(conditions)) for n, f in zip(task.lengths, firsts))
        gflops = flops / t_run / 1e9
        report[positions] = dict(t_ref=t_ref, t_eng=t_eng, speedup=t_ref / t_eng, gflops=gflops, err=err, peak=peaks[-1],
                                 vs_tl=None if t_tl is None else t_tl / t_run,
                                 ceiling=None if t_tl is None else 1 / share,
                                 fused_share=None if t_tl is None else fused_share)
        print(f"positions={positions}: reference {t_ref:.2f} s ({t_ref / len(conditions) * 1e3:.0f} ms/condition"
              f"{'' if n_ref == len(conditions) else f', timed on {n_ref} conditions'}), "
              f"engine {t_eng:.2f} s (cache {t_init:.2f} s + run {t_run:.2f} s), speed-up {t_ref / t_eng:.1f}x, "
              f"engine {gflops:.1f} GFLOP/s ({gflops / peaks[-1]:.0%} of the {peaks[-1]:.1f} GFLOP/s peak measured just "
              f"before it), max |logit_diff error| {err:.1e}", flush=True)
    def figure(x: float) -> float:  # 3 significant digits: a tiny smoke run must not round a speed to 0
        return float(f"{x:.3g}")

    result = {
        "speedup_all": figure(report["all"]["speedup"]),
        "speedup_last": figure(report["last"]["speedup"]),
        "engine_gflops": figure(report["all"]["gflops"]),
        "matmul_peak_gflops": figure(max(peaks)),  # conservative: the best of the peaks measured in this run
    }
    for positions, key in (("all", "speedup_vs_tl_blocks"), ("non_prefix", "speedup_vs_tl_blocks_non_prefix")):
        if report.get(positions, {}).get("vs_tl") is not None:  # engine run time, TransformerLens blocks / fused tail
            result[key] = figure(report[positions]["vs_tl"])
            result[key.replace("speedup", "ceiling")] = figure(report[positions]["ceiling"])
            result[key.replace("speedup_vs_tl_blocks", "fused_matmul_share")] = figure(report[positions]["fused_share"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
