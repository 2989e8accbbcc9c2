"""featsweep: networks of co-occurring SAE features, tested by steering, run as Hydra sweeps tracked in MLflow."""

__version__ = "0.1.0"
