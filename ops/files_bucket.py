"""The stage's attachments bucket (file fields; docs/operations.md, "Attachments bucket, file
links"), as ``python -m ops.bootstrap`` creates or completes it: the same settings as the "File
fields" block of infra/resources.yaml.

Reconciles: each setting that differs from what it should be is put, and named; a run with
nothing to do changes nothing. It never deletes an object or turns versioning on or off.
"""
from __future__ import annotations

import json

from chalicelib.approvals.files import SENT, STATE_TAG, UNUSED
from chalicelib.protocol.file_links import UPLOAD_PREFIX
from chalicelib.runtime import settings

UNUSED_UPLOAD_DAYS = 2
# Per stage (.chalice/config.json), as the template's StageFiles mapping; ops-only settings.
RETENTION_DAYS_SETTING = "FILES_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 400
PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                       "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
OWNERSHIP = {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}


def tls_only_policy(bucket: str, partition: str = "aws") -> dict:
    arn = f"arn:{partition}:s3:::{bucket}"
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}


def lifecycle(retention_days: int) -> dict:
    def tagged(state: str) -> dict:
        return {"And": {"Prefix": UPLOAD_PREFIX, "Tags": [{"Key": STATE_TAG, "Value": state}]}}
    return {"Rules": [
        {"ID": "unused-uploads", "Status": "Enabled", "Filter": tagged(UNUSED),
         "Expiration": {"Days": UNUSED_UPLOAD_DAYS}},
        {"ID": "sent-files", "Status": "Enabled", "Filter": tagged(SENT),
         "Expiration": {"Days": retention_days}},
        {"ID": "unfinished-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]}


def _current(call, missing: set[str]):
    """What ``call`` reads, None when S3 says the setting is not there."""
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in missing:
            return None
        raise


def stage_bucket(stage) -> tuple[str, int]:
    """The stage's attachments bucket and its retention in days (.chalice/config.json)."""
    bucket = stage.setting(settings.ATTACHMENTS_BUCKET).strip() or "jinrun-attachments"
    raw = stage.setting(RETENTION_DAYS_SETTING).strip()
    return bucket, int(raw) if raw.isdigit() else DEFAULT_RETENTION_DAYS


def reconcile_attachments_bucket(s3, bucket: str, *, region: str, tags: dict[str, str],
                                 retention_days: int, tls_only: bool = True) -> list[str]:
    """Create the attachments bucket, or complete it; returns what changed. ``tls_only=False``
    only for the sandbox, whose moto server speaks plain HTTP on loopback and enforces the
    TLS-only policy on reads as S3 would."""
    retention = retention_days
    partition = "aws-cn" if region.startswith("cn-") else "aws"
    changes: list[str] = []
    where = f"bucket {bucket}"
    if _current(lambda: s3.head_bucket(Bucket=bucket), {"404", "NoSuchBucket"}) is None:
        options = {} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, **options)
        changes.append(f"{where}: created")
    block = _current(lambda: s3.get_public_access_block(Bucket=bucket),
                     {"NoSuchPublicAccessBlockConfiguration"})
    if (block or {}).get("PublicAccessBlockConfiguration") != PUBLIC_ACCESS_BLOCK:
        s3.put_public_access_block(Bucket=bucket,
                                   PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
        changes.append(f"{where}: blocked all public access")
    owned = _current(lambda: s3.get_bucket_ownership_controls(Bucket=bucket),
                     {"OwnershipControlsNotFoundError"})
    if (owned or {}).get("OwnershipControls") != OWNERSHIP:
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=OWNERSHIP)
        changes.append(f"{where}: objects owned by the bucket owner (ACLs off)")
    encrypted = _current(lambda: s3.get_bucket_encryption(Bucket=bucket),
                         {"ServerSideEncryptionConfigurationNotFoundError"})
    rules = (encrypted or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    if not any(rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
               in ("AES256", "aws:kms") for rule in rules):
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION)
        changes.append(f"{where}: encrypted at rest (SSE-S3)")
    wanted = tls_only_policy(bucket, partition)
    policy = _current(lambda: s3.get_bucket_policy(Bucket=bucket), {"NoSuchBucketPolicy"})
    if tls_only and (policy is None or json.loads(policy["Policy"]) != wanted):
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(wanted))
        changes.append(f"{where}: refuses every request not made over TLS")
    rules = _current(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket),
                     {"NoSuchLifecycleConfiguration"})
    wanted_rules = lifecycle(retention)
    if (rules or {}).get("Rules") != wanted_rules["Rules"]:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket,
                                              LifecycleConfiguration=wanted_rules)
        changes.append(f"{where}: unused uploads expire after {UNUSED_UPLOAD_DAYS} days, sent"
                       f" files after {retention}")
    tagged = _current(lambda: s3.get_bucket_tagging(Bucket=bucket), {"NoSuchTagSet"})
    have = {tag["Key"]: tag["Value"] for tag in (tagged or {}).get("TagSet", [])}
    if {**have, **tags} != have:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
            {"Key": key, "Value": value} for key, value in {**have, **tags}.items()]})
        changes.append(f"{where}: tagged {', '.join(sorted(tags))}")
    return changes
