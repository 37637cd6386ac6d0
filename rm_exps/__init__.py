"""rm_exps: a harness for reward-model research (JSON plans -> runs)."""

__version__ = "0.1.0"
