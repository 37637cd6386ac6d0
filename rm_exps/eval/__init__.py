"""Evaluators: each maps (model, accelerator) to a dict of metrics named `eval {dataset} {metric}`."""
