"""Preference datasets: loading, generating (Hamiltonian cycles, Persona), hub loaders and preparation.

Kept import-light: submodules are imported where they are used.
"""

from rm_exps.data.errors import DatasetError

__all__ = ["DatasetError"]
