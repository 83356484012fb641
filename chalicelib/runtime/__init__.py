"""The AWS runtime: clients, tables, settings, the secrets cache, and the telemetry of every
invocation (correlation ids, structured logs, EMF metrics, X-Ray subsegments).

Knows nothing of approvals or of Zeyi's protocol (tests/test_layers.py).
"""
