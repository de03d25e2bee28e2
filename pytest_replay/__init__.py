"""pytest-traffic-replay: captured HTTP traffic replayed as pytest items.

The packages, in the order data flows through them (docs/architecture.md draws it):
capture -> reassembly -> http -> policy -> schedule / targets -> verdicts -> report, with
session/ (one object per role of a pytest run) and plugin.py (pytest's hooks) on top, and cli.py
(`python -m pytest_replay inspect | convert | redact | merge`) beside them.
"""


def __getattr__(name: str):
    """`pytest_replay.serve`: serving.serve, imported on first use (a pytest run pays nothing for it)."""
    if name == "serve":
        from .serving import serve
        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
