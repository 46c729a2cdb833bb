"""dfcil_core: data-free class-incremental learning (Always Be Dreaming and its baselines)."""

# The package's release number. What identifies the code a result came from is `provenance.code_digest`
# (a hash of the source, recorded with every task), not this.
__version__ = "0.1.0"
