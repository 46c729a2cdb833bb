"""dfcil_core: data-free class-incremental learning (Always Be Dreaming and its baselines)."""

# Part of every task fingerprint: bump it with any change that alters what a training job computes,
# so that states made by older code are refused rather than silently mixed with new ones.
__version__ = "0.1.0"
