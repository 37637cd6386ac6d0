"""Offline analyses that read a model but do not train it (e.g. `python -m rm_exps.analysis.hidden_repr`).

Kept import-light: submodules are imported where they are used.
"""
