"""What S3 does with a browser-style POST upload and moto 5.2 does not: enforce its policy.

moto server stores whatever a POST to a bucket carries: a bigger file, another content type,
another key, an expired policy, all answered 204; and it drops the POST's ``tagging`` field. In
front of moto, this WSGI layer checks the form against its policy as S3 does (the expiration,
every condition: exact matches, ``eq``, ``starts-with``, ``content-length-range``; every form
field must be named by a condition) and refuses with S3's own error codes and statuses; after an
accepted upload it applies the form's tags. It does not check the policy's signature (moto
checks no signatures; the tests check the gateway's signing with botocore's own code).

Only a POST of ``multipart/form-data`` with a ``policy`` field to a bucket (path style,
``/<bucket>``) is looked at; everything else passes through untouched.
"""
from __future__ import annotations

import base64
import io
import json
import re
import time
from datetime import datetime

_TAG_RE = re.compile(r"<Tag>\s*<Key>([^<]{1,128})</Key>\s*<Value>([^<]{0,256})</Value>\s*</Tag>")
# Form fields a policy does not name (S3's documented exceptions).
_UNCOVERED = {"policy", "x-amz-signature", "signature", "awsaccesskeyid", "file"}


class PolicyFailure(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check_policy(policy: dict, fields: dict[str, str], bucket: str, size: int, *,
                 now: float | None = None) -> None:
    """Raises PolicyFailure as S3 refuses the form; ``fields`` keyed in lower case."""
    now = time.time() if now is None else now
    expiration = policy.get("expiration", "")
    try:
        expires = datetime.strptime(expiration.replace("Z", "+0000")[:19] + "+0000",
                                    "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        raise PolicyFailure(400, "InvalidPolicyDocument",
                            "Invalid Policy: Invalid 'expiration' value") from None
    if expires < now:
        raise PolicyFailure(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    values = {**fields, "bucket": bucket}
    covered = set()
    for condition in policy.get("conditions", []):
        if isinstance(condition, dict):
            ((name, expected),) = condition.items()
            op, name = "eq", name.lower()
        elif condition and condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                raise PolicyFailure(400, "EntityTooLarge",
                                    "Your proposed upload exceeds the maximum allowed size")
            if size < low:
                raise PolicyFailure(400, "EntityTooSmall",
                                    "Your proposed upload is smaller than the minimum allowed"
                                    " size")
            continue
        else:
            op, name, expected = condition[0].lower(), condition[1].lstrip("$").lower(), \
                condition[2]
        covered.add(name)
        given = values.get(name, "")
        if (op == "eq" and given != expected) or (
                op == "starts-with" and not given.startswith(expected)):
            raise PolicyFailure(403, "AccessDenied", "Invalid according to Policy: Policy"
                                f" Condition failed: [\"{op}\", \"${name}\", \"{expected}\"]")
    for name in fields:
        if name not in _UNCOVERED and name not in covered and not name.startswith("x-ignore-"):
            raise PolicyFailure(403, "AccessDenied", "Invalid according to Policy: Extra input"
                                f" fields: {name}")


def _error(start_response, failure: PolicyFailure):
    body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{failure.code}</Code>"
            f"<Message>{failure.message}</Message></Error>").encode()
    start_response(f"{failure.status} {'Forbidden' if failure.status == 403 else 'Bad Request'}",
                   [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _tags(xml: str) -> dict[str, str]:
    # A regular expression, not an XML parser: the field comes from whoever posts the form.
    return dict(_TAG_RE.findall(xml))


class S3PostPolicy:
    def __init__(self, app):
        self._app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if (environ.get("REQUEST_METHOD") != "POST"
                or not environ.get("CONTENT_TYPE", "").startswith("multipart/form-data")
                or path.strip("/").count("/") != 0 or not path.strip("/")):
            return self._app(environ, start_response)
        from werkzeug.formparser import parse_form_data

        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        _, form, files = parse_form_data({**environ, "wsgi.input": io.BytesIO(raw)})
        environ["wsgi.input"] = io.BytesIO(raw)
        if "policy" not in form or "file" not in files:
            return self._app(environ, start_response)
        fields = {name.lower(): value for name, value in form.items()}
        size = len(files["file"].read())
        bucket = path.strip("/")
        try:
            policy = json.loads(base64.b64decode(form["policy"]))
            check_policy(policy, fields, bucket, size)
        except PolicyFailure as failure:
            return _error(start_response, failure)
        except ValueError:
            return _error(start_response, PolicyFailure(400, "InvalidPolicyDocument",
                                                        "Invalid Policy: not Base64 JSON"))
        status = []

        def recording_start(code, headers, *args):
            status.append(int(code.split()[0]))
            return start_response(code, headers, *args)

        answer = self._app(environ, recording_start)
        if status and status[0] < 300 and "tagging" in fields:
            self._apply_tags(bucket, fields.get("key", ""), fields["tagging"])
        return answer

    @staticmethod
    def _apply_tags(bucket: str, key: str, xml: str) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        backend.put_object_tagging(backend.get_object(bucket, key), _tags(xml))
