"""The attachments bucket as the bootstrap makes it, against moto server: private, encrypted,
TLS only, the lifecycle that tells unused uploads from sent files; a second run changes nothing."""
from __future__ import annotations

import json

from chalicelib.runtime import aws
from ops.files_bucket import (
    ENCRYPTION,
    PUBLIC_ACCESS_BLOCK,
    lifecycle,
    reconcile_attachments_bucket,
    tls_only_policy,
)

TAGS = {"app": "jinrun-approval-gateway", "stage": "dev"}


def test_the_bootstrap_makes_the_bucket_private_encrypted_tls_only_and_expiring(empty_aws):
    s3 = aws.client("s3")
    changes = reconcile_attachments_bucket(s3, "jinrun-attachments-dev", region="us-east-1",
                                           tags=TAGS, retention_days=90)
    assert changes[0] == "bucket jinrun-attachments-dev: created"
    assert len(changes) == 7
    bucket = {"Bucket": "jinrun-attachments-dev"}
    assert s3.get_public_access_block(**bucket)[
        "PublicAccessBlockConfiguration"] == PUBLIC_ACCESS_BLOCK
    assert s3.get_bucket_encryption(**bucket)["ServerSideEncryptionConfiguration"][
        "Rules"][0]["ApplyServerSideEncryptionByDefault"] == ENCRYPTION["Rules"][0][
        "ApplyServerSideEncryptionByDefault"]
    policy = json.loads(s3.get_bucket_policy(**bucket)["Policy"])
    assert policy == tls_only_policy("jinrun-attachments-dev")
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    rules = {rule["ID"]: rule for rule in
             s3.get_bucket_lifecycle_configuration(**bucket)["Rules"]}
    assert rules["unused-uploads"]["Expiration"] == {"Days": 2}
    assert rules["sent-files"]["Expiration"] == {"Days": 90}
    assert rules["sent-files"]["Filter"]["And"]["Tags"] == [
        {"Key": "jinrun-state", "Value": "sent"}]
    assert "Status" not in s3.get_bucket_versioning(**bucket)  # a documented decision
    assert reconcile_attachments_bucket(s3, "jinrun-attachments-dev", region="us-east-1",
                                        tags=TAGS, retention_days=90) == []


def test_a_changed_retention_is_put_again(empty_aws):
    s3 = aws.client("s3")
    reconcile_attachments_bucket(s3, "b-att", region="us-east-1", tags=TAGS, retention_days=90)
    assert reconcile_attachments_bucket(s3, "b-att", region="us-east-1", tags=TAGS,
                                        retention_days=400) == [
        "bucket b-att: unused uploads expire after 2 days, sent files after 400"]
    assert s3.get_bucket_lifecycle_configuration(Bucket="b-att")["Rules"] == lifecycle(400)[
        "Rules"]
