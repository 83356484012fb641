"""The gateway's one structured (JSON) logger, from Powertools.

Log lines carry code, businessId, nonce and appKey where known; never a secret, token or sign:
those values are never passed to the logger in the first place.
"""
from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger(service="approval-gateway")
