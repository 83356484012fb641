"""Operator tooling, run from a checkout with the project's venv: ``python -m ops ...`` (see
docs/operations.md), ``python -m ops.bootstrap`` and ``python -m ops.package``. Never deployed."""
