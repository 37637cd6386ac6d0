"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "smollm: uses the real built-in smollm2-135m-instruct model (builds it on first run: "
        "needs PyPI, ~40 s); deselect with -m 'not smollm'",
    )
