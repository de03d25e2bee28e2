"""Repository-level pytest configuration.

Deliberately hook-free: pytest also loads this file when a capture under this repository is
replayed from another directory (conftest.py files above a collected path are loaded), as the
plugin's own end-to-end tests do. pytester is enabled in pyproject.toml's addopts.
"""
