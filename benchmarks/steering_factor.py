"""Steering-factor calibration: how hard a factor pushes, against the residual norm at the hook.

    python benchmarks/steering_factor.py                         # the default preset (the organism)
    python benchmarks/steering_factor.py --factors 1,2,3,5,10 --extra sae.layer=2

The push of a single feature is ``factor * scale_i * ||d_i||`` (``steering.scale``, the decoder row
``d_i``; see featsweep/engines/intervention.py). The default run's network is built exactly as the pipeline builds
it (featsweep.control.build_network); the steered features are those of the kept clusters.
For each factor this prints their mean push over the mean L2 norm of the residual stream at the hook
(task prompts, BOS excluded). What the push does to the task is measured by the pipeline itself:
``python -m featsweep -m steering.factor=1,2,3,5,10`` logs ``steering.single.mean_prob`` per factor.
The last line is JSON: {"hook": ..., "resid_norm": ..., "push_per_unit_factor": ..., "ratio": {factor: ...}}.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", default="1,2,3,5,10")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides (as for python -m featsweep)")
    args = parser.parse_args()

    import torch

    from featsweep.control import build_network, push_ratio

    torch.set_num_threads(1)
    built = build_network(args.extra)
    factors = [float(f) for f in args.factors.split(",")]
    ratios = {f: push_ratio(built, f) for f in factors[:1]}
    base = next(iter(ratios.values()))
    print(f"{built['subject'].hook_name}: mean residual norm {base['resid_norm']:.3f} (task prompts, BOS excluded); "
          f"mean scale_i * ||d_i|| over the steered features = {base['push_per_unit_factor']:.3f}")
    for f in factors:
        print(f"  factor {f:6.2f}: push / residual norm = {f * base['push_per_unit_factor'] / base['resid_norm']:.3f}")
    print(json.dumps({"hook": built["subject"].hook_name, "resid_norm": base["resid_norm"],
                      "push_per_unit_factor": base["push_per_unit_factor"],
                      "ratio": {str(f): f * base["push_per_unit_factor"] / base["resid_norm"] for f in factors}}))


if __name__ == "__main__":
    main()
