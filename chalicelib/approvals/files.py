"""File fields for the whole life of an approval: uploads, stable links, checked URLs.

Why: the obvious way to share a private S3 object, a presigned URL, dies with the role session
that signed it (hours for a Lambda or ECS role), whatever ``ExpiresIn`` asked for, while the
approver may click it days later. So:

- ``request_upload``: ``POST /files`` answers a ``fileId`` and a presigned POST whose policy
  pins the object's key, exact size and content type (and its file name, as metadata).
- ``FileLinks.prepare``: at send, before anything is stored, every file field is checked: a
  fileId or ``s3://`` must name an object that exists in a bucket the stage reads; a plain URL
  must be able to last (``file_links.durability_problem``). Its ``body_for`` then replaces each
  reference, in the body signed for Zeyi only, by a stable link on the public API; the attempt
  keeps the app's own body.
- ``open_link``: a click. The link's signature, then the approval (open, or decided less than
  the grace period ago, and not revoked), then a short presigned GET.
"""
from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from urllib.parse import unquote

from chalicelib.approvals import states
from chalicelib.errors import ConfigError, ServiceUnavailableError, ValidationError
from chalicelib.protocol import envelope, file_links
from chalicelib.protocol.file_links import LinkClaims, ObjectRef
from chalicelib.runtime.logs import logger

FILE_NAME_MAX_CHARS = 255
NAME_METADATA = "filename"  # x-amz-meta-filename: the name, percent-encoded UTF-8
UPLOAD_FIELDS = ("fileName", "contentType", "size")
# The attachments bucket's lifecycle (infra/resources.yaml) tells uploads never used in a send
# (expired within days) from files a send linked (kept for the stage's retention) by this tag.
STATE_TAG = "jinrun-state"
UNUSED, SENT = "unused", "sent"
_UNUSED_TAGGING = (f"<Tagging><TagSet><Tag><Key>{STATE_TAG}</Key><Value>{UNUSED}</Value></Tag>"
                   "</TagSet></Tagging>")


class LinkRefused(Exception):  # noqa: N818 - a verdict shown to a person as a page
    """A click that gets no file: 404 (not a link of ours) or 410 (ended or revoked)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- uploads ------------------------------------------------------------------------------------

def request_upload(payload: object, *, s3, settings) -> dict:
    """The envelope with ``{fileId, upload: {method, url, fields}, expiresInSeconds}``.

    Raises ValidationError naming every bad field (nothing is created)."""
    if not isinstance(payload, dict):
        raise ValidationError("body must be a JSON object")
    problems = [f"{name} is not a field of an upload request" for name in payload
                if name not in UPLOAD_FIELDS]
    name = payload.get("fileName")
    if (not isinstance(name, str) or not name.strip() or len(name) > FILE_NAME_MAX_CHARS
            or not name.isprintable() or "/" in name or "\\" in name):
        problems.append(f"fileName must be 1 to {FILE_NAME_MAX_CHARS} printable characters"
                        " with no '/' or '\\'")
    content_type = payload.get("contentType")
    allowed = settings.files_allowed_types
    if not isinstance(content_type, str) or content_type.strip().lower() not in allowed:
        problems.append(f"contentType must be one of {', '.join(allowed)}")
    size = payload.get("size")
    if (not isinstance(size, int) or isinstance(size, bool)
            or not 1 <= size <= settings.files_max_bytes):
        problems.append(f"size must be the file's size in bytes, 1 to {settings.files_max_bytes}")
    if problems:
        raise ValidationError("; ".join(problems), result={"problems": problems})
    content_type = content_type.strip().lower()
    file_id = f"file-{secrets.token_hex(16)}"
    key = file_links.upload_key(file_id)
    stored_name = file_links.metadata_name(name)
    fields = {"Content-Type": content_type, f"x-amz-meta-{NAME_METADATA}": stored_name,
              "tagging": _UNUSED_TAGGING}
    # The policy S3 enforces on the POST: this key, exactly this size, this type, name and tag.
    conditions = [["content-length-range", size, size], {"Content-Type": content_type},
                  {f"x-amz-meta-{NAME_METADATA}": stored_name}, {"tagging": _UNUSED_TAGGING}]
    post = _s3_call(lambda: s3.generate_presigned_post(
        settings.attachments_bucket, key, Fields=fields, Conditions=conditions,
        ExpiresIn=settings.files_upload_seconds))
    logger.info("upload offered", extra={"fileId": file_id, "size": size,
                                         "contentType": content_type})
    return envelope.ok({"fileId": file_id, "expiresInSeconds": settings.files_upload_seconds,
                        "upload": {"method": "POST", "url": post["url"],
                                   "fields": post["fields"]}})


# -- sends: check every file field, then link the references ----------------------------------

@dataclass(frozen=True)
class PreparedFiles:
    """The checked references of one send body, ready to be turned into links for an attempt."""

    body: dict
    refs: dict[int, ObjectRef]  # form item index -> object
    token_keys: object
    public_base_url: str
    now_ms: int

    def body_for(self, code: str, attempt_id: str) -> dict:
        """The body to sign for Zeyi: each reference replaced by its stable link, and the file
        name as ``extendValue`` where the app set none. The app's body is not changed."""
        if not self.refs:
            return self.body
        out = copy.deepcopy(self.body)
        for index, ref in self.refs.items():
            item = out["auditFormList"][index]
            token = file_links.issue_link_token(
                self.token_keys, LinkClaims(ref=ref, code=code, attempt_id=attempt_id,
                                            issued_at_ms=self.now_ms))
            item["value"] = file_links.link_url(self.public_base_url, token)
            if item.get("extendValue") is None:
                item["extendValue"] = ref.file_name
        return out


class FileLinks:
    """The send's file port: ``s3`` and ``token_keys`` are callables, used only when a body
    names a file, so a send without one costs no extra AWS call."""

    def __init__(self, *, s3, token_keys, settings, clock):
        self._s3 = s3
        self._token_keys = token_keys
        self._settings = settings
        self._clock = clock

    def prepare(self, body: dict) -> PreparedFiles:
        """Raises ValidationError naming every file field that cannot be used, and why."""
        settings = self._settings
        now_s = self._clock()
        problems: list[str] = []
        refs: dict[int, ObjectRef] = {}
        for index, item in enumerate(body.get("auditFormList") or []):
            if not isinstance(item, dict) or item.get("type") != "file":
                continue
            label = f"auditFormList[{index}].value"
            value = item["value"]
            if file_links.is_file_id(value):
                where = (settings.attachments_bucket, file_links.upload_key(value))
                ref = self._object(*where, label, problems, what=f"fileId {value}")
            elif (s3_ref := file_links.parse_s3_url(value)) is not None:
                readable = (settings.attachments_bucket, *settings.files_read_buckets)
                if s3_ref[0] not in readable:
                    problems.append(f"{label} names bucket {s3_ref[0]}, which this stage does not"
                                    f" read (it reads {', '.join(readable)})")
                    continue
                ref = self._object(*s3_ref, label, problems, what=value)
            else:
                reason = file_links.durability_problem(
                    value, now_s=now_s, horizon_seconds=settings.files_url_horizon_seconds,
                    allow_http=settings.files_allow_http)
                if reason:
                    problems.append(f"{label} {reason}; {file_links.DO_INSTEAD}")
                continue
            if ref is not None:
                refs[index] = ref
        if problems:
            raise ValidationError("; ".join(problems), result={"problems": problems})
        if refs and not settings.public_base_url:
            raise ConfigError("setting PUBLIC_BASE_URL is not set: the gateway cannot link the"
                              " files of this send")
        for ref in refs.values():
            self._mark_sent(ref)
        return PreparedFiles(body=body, refs=refs,
                             token_keys=self._token_keys() if refs else None,
                             public_base_url=settings.public_base_url,
                             now_ms=int(now_s * 1000))

    def _mark_sent(self, ref: ObjectRef) -> None:
        """Keep an upload for the stage's retention, not as an unused one. Before the claim: a
        send that then fails keeps its file longer, never the reverse."""
        if ref.bucket != self._settings.attachments_bucket or not ref.key.startswith(
                file_links.UPLOAD_PREFIX):
            return  # not the gateway's upload: its owner's lifecycle applies
        try:
            _s3_call(lambda: self._s3().put_object_tagging(
                Bucket=ref.bucket, Key=ref.key,
                Tagging={"TagSet": [{"Key": STATE_TAG, "Value": SENT}]}))
        except ServiceUnavailableError:
            # The link still works; the file is only at risk of the unused-upload expiry,
            # which the log line lets an operator prevent.
            logger.exception("upload not tagged as sent", extra={"key": ref.key})

    def _object(self, bucket: str, key: str, label: str, problems: list[str], *,
                what: str) -> ObjectRef | None:
        from botocore.exceptions import ClientError

        try:
            head = _s3_call(lambda: self._s3().head_object(Bucket=bucket, Key=key),
                            refusals=True)
        except ClientError:
            # Without s3:ListBucket (which the roles do not have) S3 answers 403 for a missing
            # key too: both mean there is nothing the gateway can link.
            problems.append(f"{label} names {what}, but no such file is stored where the"
                            " gateway may read it (upload it first, with the form POST /files"
                            " answered)")
            return None
        named = unquote(head.get("Metadata", {}).get(NAME_METADATA, ""))
        return ObjectRef(bucket=bucket, key=key,
                         file_name=named or key.rsplit("/", 1)[-1],
                         content_type=head.get("ContentType") or "application/octet-stream")


# -- clicks ---------------------------------------------------------------------------------------

def open_link(token: str, *, token_keys, store, s3, settings) -> str:
    """Where the click goes: a presigned GET of the object, valid for minutes.

    Raises LinkRefused(404) for a link that is not the gateway's, LinkRefused(410) for one that
    ended (approval decided more than the grace period ago, or revoked)."""
    try:
        claims = file_links.verify_link_token(token_keys, token)
    except file_links.LinkInvalid as exc:
        raise LinkRefused(404, str(exc)) from None
    logger.append_keys(code=claims.code, attemptId=claims.attempt_id)
    head, files, attempt = store.link_state(claims.code, claims.attempt_id)
    now_ms = store.now_ms()
    if head is None or attempt is None:
        raise LinkRefused(410, "the approval is no longer kept")
    revoked_at = (files or {}).get("revokedAt")
    if revoked_at is not None and claims.issued_at_ms <= revoked_at:
        raise LinkRefused(410, "revoked")
    current = head["attemptId"] == claims.attempt_id
    status = head["status"] if current else attempt.get("status")
    if status not in states.OPEN or not current:
        ended_at = (head if current else attempt).get("updatedAt") or 0
        if now_ms > ended_at + settings.files_grace_seconds * 1000:
            raise LinkRefused(410, f"the approval ended ({status})")
    try:
        store.count_click(claims.code, claims.attempt_id)
    except ServiceUnavailableError:
        # A lost count must not cost the approver the file.
        logger.exception("file click not counted")
    ref = claims.ref
    return _s3_call(lambda: s3().generate_presigned_url(
        "get_object", ExpiresIn=settings.files_download_seconds,
        Params={"Bucket": ref.bucket, "Key": ref.key,
                "ResponseContentDisposition": file_links.content_disposition(ref.file_name),
                "ResponseContentType": ref.content_type}))


def _s3_call(call, *, refusals: bool = False):
    """One S3 call; an unreachable or failing S3 becomes ServiceUnavailableError. With
    ``refusals``, S3's 4xx answers stay ClientError for the caller to read."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if refusals and 400 <= status < 500:
            raise
        raise ServiceUnavailableError(f"S3 answered {status}") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailableError(f"S3 could not be reached ({type(exc).__name__})") from exc


# -- what a person sees when a link gives no file -------------------------------------------------

_PAGES = {
    404: ("链接无效", "This link is not valid",
          "这个文件链接已损坏，或不是由今润审批网关发出的。请回到钉钉中的审批重新打开附件。",
          "This file link is damaged or was not issued by Jinrun's approval gateway. Open the"
          " attachment again from the approval in DingTalk."),
    405: ("不支持此操作", "Not supported",
          "文件链接只能直接打开。", "A file link can only be opened (GET)."),
    410: ("链接已失效", "This link has expired",
          "这份审批附件的链接已过期（审批结束已超过保留期限）或已被撤销。如仍需查看，请联系审批发起人。",
          "The link to this approval's attachment has expired (the approval ended longer ago"
          " than files are kept available) or was revoked. Ask the person who started the"
          " approval for the file."),
    503: ("暂时无法打开", "Temporarily unavailable",
          "文件暂时无法打开，请稍后再试。", "The file cannot be opened right now. Try again in a"
          " minute."),
}


def refusal_page(status: int) -> str:
    """A small page, in Chinese and English, for a click that gets no file; never internals."""
    title_zh, title_en, text_zh, text_en = _PAGES.get(status, _PAGES[503])
    return ("<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{title_zh} · {title_en}</title><style>body{{font-family:system-ui,"
            "sans-serif;max-width:34em;margin:3em auto;padding:0 1em;color:#222}"
            "h1{font-size:1.3em}p{line-height:1.5}</style></head><body>"
            f"<h1>{title_zh}</h1><p>{text_zh}</p><h1 lang=\"en\">{title_en}</h1>"
            f"<p lang=\"en\">{text_en}</p><p><small>HTTP {status}</small></p></body></html>")
