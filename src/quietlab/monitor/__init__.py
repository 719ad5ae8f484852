"""The monitor: probes, attention statistics and transition detection, attached to a model through named activation taps."""

from .features import classify_features, classify_run
from .monitor import Monitor, attention_entropy, probe_run, probe_set, qkv_grad_stats
from .probes import ProbeResult, capture_layers, fit_features, fit_probes, split_probe_set

__all__ = [
    "Monitor", "ProbeResult", "attention_entropy", "capture_layers", "classify_features", "classify_run",
    "fit_features", "fit_probes", "probe_run", "probe_set", "qkv_grad_stats", "split_probe_set",
]
