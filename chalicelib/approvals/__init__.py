"""The approvals domain: the transition table and binding rules (``states``), the store that
applies them to DynamoDB, the use cases Zeyi and the internal apps call (``inbound``,
``outbound``), the stuck-approval search and the events outbox.

Never imports Chalice (tests/test_layers.py).
"""
