"""Jinrun's approval gateway: the logic behind the Chalice routes in ``app.py``.

Nothing in this package imports ``chalice``; it raises the errors of ``chalicelib.errors`` and
``app.py`` maps them to HTTP.
"""
