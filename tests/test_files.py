"""File fields through app.py: an upload into moto's S3, a send that reaches the Zeyi simulator
with a stable link, the link followed to the exact bytes and the Chinese file name, its end
(grace period, revocation), forged links, and plain URLs that cannot last refused at send."""
from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from urllib.parse import unquote

import boto3
import pytest
import requests

from chalicelib.approvals import files
from chalicelib.approvals.outbound import send_approval
from chalicelib.approvals.store import CallbackRecord
from chalicelib.protocol import file_links
from chalicelib.protocol.credentials import TokenKeys
from chalicelib.runtime import aws, settings
from tests.conftest import OUTBOUND, TOKEN_KEYS, TOKEN_SECRET_ID, post
from tests.peer import send_body
from tests.test_ops_cli import run_ops, stage_config

BUCKET = "test-attachments"
PUBLIC = "https://approvals.jinrun.example/api"
NAME = "采购合同 2026-第3号.pdf"
GATEWAY_KEYS = TokenKeys(tuple(key.encode() for key in TOKEN_KEYS["keys"]))
PDF = b"%PDF-1.4\n% \xe2\xe3\xcf\xd3 jinrun test contract\n%%EOF\n"


@pytest.fixture
def s3_env(aws_env, monkeypatch):
    monkeypatch.setenv(settings.ATTACHMENTS_BUCKET, BUCKET)
    monkeypatch.setenv(settings.PUBLIC_BASE_URL, PUBLIC)
    aws.client("s3").create_bucket(Bucket=BUCKET)
    return aws_env


def upload(gateway, data=PDF, name=NAME, content_type="application/pdf") -> str:
    status, answer = post(gateway, "/files", {"fileName": name, "contentType": content_type,
                                              "size": len(data)})
    assert status == 200, answer
    form = answer["result"]["upload"]
    put = requests.post(form["url"], data=form["fields"], files={"file": (name, data)},
                        timeout=10)
    assert put.status_code in (200, 204), put.text
    return answer["result"]["fileId"]


def file_send(code, value, **item):
    body = send_body(code)
    body["auditFormList"][1] = {"type": "file", "key": "合同", "value": value, **item}
    return body


def sent_file_item(zeyi, code) -> dict:
    return zeyi.instance(code).request["auditFormList"][1]


def token_of(link: str) -> str:
    assert link.startswith(f"{PUBLIC}/files/")
    return link[len(f"{PUBLIC}/files/"):]


def click(gateway, token):
    return gateway.http.get(f"/files/{token}")


def test_upload_answers_a_policy_that_pins_key_size_type_and_name(gateway, s3_env):
    status, answer = post(gateway, "/files", {"fileName": NAME, "contentType": "application/pdf",
                                              "size": 1234})
    assert status == 200
    result = answer["result"]
    assert file_links.is_file_id(result["fileId"])
    fields = result["upload"]["fields"]
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, as every region accepts
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert ["content-length-range", 1234, 1234] in conditions
    assert {"Content-Type": "application/pdf"} in conditions
    assert {"key": f"uploads/{result['fileId']}"} in conditions
    assert {"bucket": BUCKET} in conditions
    assert {"x-amz-meta-filename": file_links.metadata_name(NAME)} in conditions
    # Tagged unused: the bucket's lifecycle expires it within days unless a send links it.
    assert {"tagging": fields["tagging"]} in conditions
    assert "<Key>jinrun-state</Key><Value>unused</Value>" in fields["tagging"]
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 0 < expires.timestamp() - time.time() <= 900


def test_s3_refuses_an_upload_of_another_size_or_type_than_the_policy_pins(gateway, s3_env):
    """Against moto server, which enforces a POST's policy through sandbox.s3_post_policy (moto
    alone would store anything: docs/operations.md, "Attachments bucket, file links")."""
    status, answer = post(gateway, "/files", {"fileName": NAME, "contentType": "application/pdf",
                                              "size": len(PDF)})
    form = answer["result"]["upload"]
    file_id = answer["result"]["fileId"]

    def send(fields, data):
        return requests.post(form["url"], data=fields, files={"file": (NAME, data)}, timeout=10)

    bigger = send(form["fields"], PDF + b"x")
    assert bigger.status_code == 400 and "<Code>EntityTooLarge</Code>" in bigger.text
    smaller = send(form["fields"], PDF[:-1])
    assert smaller.status_code == 400 and "<Code>EntityTooSmall</Code>" in smaller.text
    html = send({**form["fields"], "Content-Type": "text/html"}, PDF)
    assert html.status_code == 403 and "Policy Condition failed" in html.text
    elsewhere = send({**form["fields"], "key": "uploads/file-" + "f" * 32}, PDF)
    assert elsewhere.status_code == 403
    s3 = aws.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # nothing was stored
    assert send(form["fields"], PDF).status_code == 204
    stored = s3.head_object(Bucket=BUCKET, Key=f"uploads/{file_id}")
    assert (stored["ContentType"], stored["ContentLength"]) == ("application/pdf", len(PDF))
    assert s3.get_object_tagging(Bucket=BUCKET, Key=f"uploads/{file_id}")["TagSet"] == [
        {"Key": "jinrun-state", "Value": "unused"}]


UPLOAD_REFUSALS = [
    ({"fileName": "a.exe", "contentType": "application/x-msdownload", "size": 10},
     "contentType must be one of"),
    ({"fileName": "big.pdf", "contentType": "application/pdf", "size": 25 * 1024 * 1024 + 1},
     "size must be the file's size in bytes, 1 to 26214400"),
    ({"fileName": "../x.pdf", "contentType": "application/pdf", "size": 10}, "fileName"),
    ({"fileName": "x.pdf", "contentType": "application/pdf", "size": 10, "acl": "public"},
     "acl is not a field of an upload request"),
]


def test_an_upload_outside_the_stage_limits_is_refused(gateway, s3_env):
    for payload, problem in UPLOAD_REFUSALS:
        status, answer = post(gateway, "/files", payload)
        assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
        assert problem in answer["message"]
    assert gateway.http.get("/files").status_code == 405  # the envelope, like /audit/send


def test_the_stage_limits_are_settings(gateway, s3_env, monkeypatch):
    monkeypatch.setenv(settings.FILES_MAX_BYTES, "100")
    monkeypatch.setenv(settings.FILES_ALLOWED_TYPES, "image/png")
    assert post(gateway, "/files", {"fileName": "a.pdf", "contentType": "application/pdf",
                                    "size": 10})[0] == 400
    assert post(gateway, "/files", {"fileName": "a.png", "contentType": "image/png",
                                    "size": 101})[0] == 400
    assert post(gateway, "/files", {"fileName": "a.png", "contentType": "image/png",
                                    "size": 100})[0] == 200


def test_a_file_id_reaches_zeyi_as_a_stable_link_that_gives_the_exact_file(gateway, s3_env,
                                                                            zeyi, logs):
    file_id = upload(gateway)
    status, answer = post(gateway, "/audit/send", file_send("FILE-1", file_id))
    assert status == 200, answer
    sent = sent_file_item(zeyi, "FILE-1")
    token = token_of(sent["value"])
    assert sent["extendValue"] == NAME  # the app set none: the file name
    # The attempt keeps what the app sent, not the link.
    record = json.loads(gateway.http.get("/audit/FILE-1").body)["result"]
    assert record["attempts"][0]["request"]["auditFormList"][1]["value"] == file_id
    # Linked in a send: kept for the stage's retention, not expired as an unused upload.
    tags = aws.client("s3").get_object_tagging(Bucket=BUCKET, Key=f"uploads/{file_id}")
    assert tags["TagSet"] == [{"Key": "jinrun-state", "Value": "sent"}]

    response = click(gateway, token)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert "X-Amz-Expires=300" in location
    got = requests.get(location, timeout=10)
    assert got.status_code == 200 and got.content == PDF
    assert got.headers["Content-Type"] == "application/pdf"
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith("attachment; ")
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == NAME

    click(gateway, token)
    attempt = json.loads(gateway.http.get("/audit/FILE-1").body)["result"]["attempts"][0]
    assert attempt["fileClickCount"] == 2
    assert attempt["fileFirstClickAt"] <= attempt["fileLastClickAt"]
    # The link is a bearer capability and the redirect is presigned: neither is logged.
    assert any(line.get("message") == "upload offered" for line in logs())  # it is the log
    logged = json.dumps(logs(), ensure_ascii=False)
    assert token.split(".")[2] not in logged and "X-Amz-Signature" not in logged


def test_the_apps_extend_value_is_kept(gateway, s3_env, zeyi):
    file_id = upload(gateway)
    post(gateway, "/audit/send", file_send("FILE-2", file_id, extendValue="合同扫描件"))
    assert sent_file_item(zeyi, "FILE-2")["extendValue"] == "合同扫描件"


def test_an_object_named_by_s3_url_is_linked_only_in_an_allowed_bucket(gateway, s3_env, zeyi,
                                                                       monkeypatch):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="erp-archive")
    s3.put_object(Bucket="erp-archive", Key="2026/发票 INV-7.pdf", Body=PDF,
                  ContentType="application/pdf")
    status, answer = post(gateway, "/audit/send",
                          file_send("FILE-3", "s3://erp-archive/2026/发票 INV-7.pdf"))
    assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert "names bucket erp-archive, which this stage does not read" in answer["message"]
    assert zeyi.requests_log() == []

    monkeypatch.setenv(settings.FILES_READ_BUCKETS, "erp-archive")
    status, answer = post(gateway, "/audit/send",
                          file_send("FILE-3", "s3://erp-archive/2026/发票 INV-7.pdf"))
    assert status == 200, answer
    sent = sent_file_item(zeyi, "FILE-3")
    assert sent["extendValue"] == "发票 INV-7.pdf"
    got = requests.get(click(gateway, token_of(sent["value"])).headers["Location"], timeout=10)
    assert got.content == PDF


@pytest.mark.parametrize("value", ["file-" + "0" * 32, f"s3://{BUCKET}/uploads/nothing.pdf"])
def test_a_reference_to_nothing_is_refused_and_nothing_is_stored(gateway, s3_env, zeyi, value):
    status, answer = post(gateway, "/audit/send", file_send("FILE-4", value))
    assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
    assert "auditFormList[1].value" in answer["message"]
    assert "no such file is stored" in answer["message"]
    assert gateway.http.get("/audit/FILE-4").status_code == 404
    assert zeyi.requests_log() == []


def test_a_damaged_or_forged_link_is_a_404_page_for_people(gateway, s3_env, zeyi):
    post(gateway, "/audit/send", file_send("FILE-5", upload(gateway)))
    token = token_of(sent_file_item(zeyi, "FILE-5")["value"])
    damaged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    # The same claims, MAC'd with a key that is not the gateway's.
    claims = file_links.verify_link_token(GATEWAY_KEYS, token)
    forged = file_links.issue_link_token(TokenKeys((b"not-the-gateway-key-0123456789abcdef",)),
                                         claims)
    for bad in (damaged, forged, "x", "f1.." + "A" * 43, "%00%ff"):
        response = click(gateway, bad)
        assert response.status_code == 404
        assert response.headers["Content-Type"].startswith("text/html")
        page = response.body.decode("utf-8")
        assert "链接无效" in page and "This link is not valid" in page
        assert "Traceback" not in page and "Location" not in response.headers


def test_other_methods_on_a_link_get_a_page_not_a_stack_trace(gateway):
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
        response = gateway.http.request(method, "/files/anything", body=b"x")
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET"
        assert response.headers["Content-Type"].startswith("text/html")


def test_revoke_ends_the_codes_links_at_once(gateway, s3_env, zeyi, capsys, tmp_path):
    post(gateway, "/audit/send", file_send("FILE-6", upload(gateway)))
    token = token_of(sent_file_item(zeyi, "FILE-6")["value"])
    assert click(gateway, token).status_code == 302
    status, out, err = run_ops(capsys, "files", "revoke", "FILE-6", "--stage", "dev",
                               "--config", stage_config(tmp_path))
    assert status == 0 and err == ""
    assert "every file link of code FILE-6 issued until" in out
    response = click(gateway, token)
    assert response.status_code == 410
    assert "链接已失效" in response.body.decode("utf-8")


def test_an_ended_approvals_link_works_through_the_grace_period_then_is_410(s3_env, store,
                                                                            clock, zeyi):
    clock.start = time.time()
    s3 = aws.client("s3")
    s3.put_object(Bucket=BUCKET, Key="uploads/file-" + "a" * 32, Body=PDF,
                  ContentType="application/pdf", Metadata={"filename": "x.pdf"})
    stage = settings.load_settings()
    keys = GATEWAY_KEYS
    links = files.FileLinks(s3=lambda: s3, token_keys=lambda: keys, settings=stage, clock=clock)
    from chalicelib.protocol.credentials import parse_outbound
    from chalicelib.protocol.zeyi_client import ZeyiClient

    client = ZeyiClient(zeyi.url, lambda: parse_outbound("o", json.dumps(OUTBOUND)),
                        connect_timeout_seconds=2, read_timeout_seconds=5, encrypt=False)
    send_approval(file_send("FILE-7", "file-" + "a" * 32), store=store, zeyi=client,
                  lease_seconds=120, files=links)
    token = token_of(sent_file_item(zeyi, "FILE-7")["value"])

    def open_():
        return files.open_link(token, token_keys=keys, store=store, s3=lambda: s3,
                               settings=stage)

    clock.skipped_seconds += 60 * 24 * 3600  # open for two months: still valid
    assert open_().startswith(s3_env.url)
    business_id = zeyi.instance("FILE-7").business_id
    store.record_callback(CallbackRecord(
        code="FILE-7", business_id=business_id, type="finish", result="agree",
        audit_type="purchase", audit_user="m", remark=None, body="{}", app_key="k",
        nonce="n-file-7"), 1200)
    assert store.get_head("FILE-7")["status"] == "AGREED"
    clock.skipped_seconds += stage.files_grace_seconds - 60
    assert open_().startswith(s3_env.url)
    clock.skipped_seconds += 120
    with pytest.raises(files.LinkRefused) as refused:
        open_()
    assert refused.value.status == 410


def test_rotating_the_token_key_keeps_valid_links_working(gateway, s3_env, zeyi, monkeypatch):
    post(gateway, "/audit/send", file_send("FILE-8", upload(gateway)))
    token = token_of(sent_file_item(zeyi, "FILE-8")["value"])
    old = json.loads(aws.client("secretsmanager").get_secret_value(
        SecretId=TOKEN_SECRET_ID)["SecretString"])["keys"][0]
    # Steps 1 and 2 of `ops secrets rotate-token-key`: a new key is added, then signs.
    aws.client("secretsmanager").put_secret_value(
        SecretId=TOKEN_SECRET_ID,
        SecretString=json.dumps({"keys": ["a-brand-new-token-key-0123456789abcdefghij", old]}))
    monkeypatch.setenv(settings.SECRETS_CACHE_SECONDS, "1")
    import app as gateway_app

    gateway_app._secrets = None
    assert click(gateway, token).status_code == 302
    post(gateway, "/audit/send", file_send("FILE-9", upload(gateway)))
    newer = token_of(sent_file_item(zeyi, "FILE-9")["value"])
    assert click(gateway, newer).status_code == 302
    with pytest.raises(file_links.LinkInvalid):  # signed by the new key, not the old one
        file_links.verify_link_token(TokenKeys((old.encode(),)), newer)


# -- plain URLs that cannot last -------------------------------------------------------------------

def presigned_with_temporary_credentials() -> str:
    client = boto3.client("s3", region_name="us-east-1", endpoint_url="https://s3.amazonaws.com",
                          aws_access_key_id="ASIAEXAMPLE", aws_secret_access_key="secret",
                          aws_session_token="FwoGZXIvYXdzEXAMPLE")
    return client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "c.pdf"},
                                         ExpiresIn=604800)


def presigned_for(seconds: int) -> str:
    client = boto3.client("s3", region_name="us-east-1", endpoint_url="https://s3.amazonaws.com",
                          aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="secret")
    return client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "c.pdf"},
                                         ExpiresIn=seconds)


def test_a_plain_url_that_cannot_last_is_refused_at_send(gateway, s3_env, zeyi):
    for url, reason in [
        (presigned_with_temporary_credentials(), "presigned with temporary credentials"),
        (presigned_for(3600), "before the approval can be expected to be decided"),
        (f"https://cdn.example/c.pdf?Expires={int(time.time()) + 86400}&Signature=x",
         "before the approval can be expected to be decided"),
        ("http://files.example/c.pdf", "is not an https URL"),
    ]:
        status, answer = post(gateway, "/audit/send", file_send("URL-1", url))
        assert (status, answer["errorCode"]) == (400, "VALIDATION_ERROR")
        message = answer["message"]
        assert message.startswith("auditFormList[1].value ") and reason in message
        assert "upload the file (POST /files)" in message
        assert "FwoGZXIvYXdzEXAMPLE" not in message
    assert gateway.http.get("/audit/URL-1").status_code == 404
    assert zeyi.requests_log() == []


def test_a_plain_url_that_lasts_goes_to_zeyi_unchanged(gateway, s3_env, zeyi, monkeypatch):
    long_lived = f"https://cdn.example/c.pdf?Expires={int(time.time()) + 90 * 86400}"
    assert post(gateway, "/audit/send", file_send("URL-2", long_lived))[0] == 200
    assert sent_file_item(zeyi, "URL-2")["value"] == long_lived
    monkeypatch.setenv(settings.FILES_ALLOW_HTTP, "true")  # the local stage
    assert post(gateway, "/audit/send", file_send("URL-3", "http://127.0.0.1/c.pdf"))[0] == 200
