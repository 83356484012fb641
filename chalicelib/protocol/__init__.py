"""Zeyi's wire protocol: signing, AES, access tokens, the envelope, strict JSON, the payloads'
validation, credentials, the inbound checks and the outbound client.

Pure: nothing here imports boto3, the approvals store or Chalice (tests/test_layers.py).
"""
