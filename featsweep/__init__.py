"""featsweep: networks of co-occurring SAE features, tested by steering, run as Hydra sweeps tracked in MLflow.

Start here. Each folder owns one concern and says in its ``__init__`` what it may import; data flows one way:

* ``subjects/``   the model and SAE under study (loading and fit checks, GGUF, the organism, SmolLM2)
* ``stages/``     the pipeline's stages, each a plain function of its inputs (task, attribution, network, steering)
* ``engines/``    the compiled graph engine with its networkx reference; the intervention engine with its fused tail
* ``hypotheses/`` nulls, tests, statistics and the written verdict rules
* ``tracking/``   the MLflow run lifecycle (store, liveness, signals, naming, inputs, upload, stage cache)
* ``reports/``    the run report, the sweep summary and ``compare``

The top level holds the shared vocabulary every folder may import (``config``, ``results``, ``errors``, ``plots``)
and the entry points that join the folders (``__main__``, ``pipeline``, ``sweep``, ``rerun``, ``control``).
"""

from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"  # the task CSVs, shipped in the wheel
CONF_DIR = PACKAGE_DIR / "conf"  # Hydra config groups
