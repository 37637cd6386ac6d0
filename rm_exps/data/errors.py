"""The one exception data code raises for bad input.

A ValueError subclass, so callers that only know "bad value" still catch it, while the
harness can tell a broken dataset apart from a bug and show its message as is.
"""


class DatasetError(ValueError):
    """A dataset path, file, split or column is missing or malformed; the message says which."""
