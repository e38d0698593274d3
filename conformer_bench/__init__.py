"""conformer-bench: cost and ablation measurements for the Conformer hybrid CNN-transformer."""

__version__ = "0.1.0"
