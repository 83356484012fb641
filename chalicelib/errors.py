"""One exception per way a request can fail, each carrying its errorCode and HTTP status.

``app.py`` turns any ``GatewayError`` into the response envelope; nothing else reaches a caller.
The status here is the REST one, which the internal routes answer. On the routes Zeyi calls,
app.py answers every refusal (any status below 500) with 400 instead, in one place: Zeyi's HTTP
stack reads no other 4xx body.
"""
from __future__ import annotations


class GatewayError(Exception):
    """Base of every failure the gateway reports to a caller."""

    error_code = "INTERNAL_ERROR"
    status = 500
    business = False

    def __init__(self, message: str, *, result=None):
        super().__init__(message)
        self.message = message
        self.result = result


class ConfigError(GatewayError):
    """A setting or secret is missing or unusable; the operator must fix it."""

    error_code = "CONFIG_ERROR"
    status = 500


class IpNotAllowedError(GatewayError):
    """The source IP is not on the route's allowlist."""

    error_code = "IP_NOT_ALLOWED"
    status = 403


class HeaderMissingError(GatewayError):
    """A required security header is absent or empty."""

    error_code = "HEADER_MISSING"
    status = 400


class AppKeyUnknownError(GatewayError):
    """The appKey header names no active credential."""

    error_code = "APP_KEY_UNKNOWN"
    status = 401


class TimestampInvalidError(GatewayError):
    """The timestamp header is not 13 decimal digits."""

    error_code = "TIMESTAMP_INVALID"
    status = 400


class TimestampOutOfWindowError(GatewayError):
    """The timestamp is too old or too far in the future."""

    error_code = "TIMESTAMP_OUT_OF_WINDOW"
    status = 401


class NonceInvalidError(GatewayError):
    """The nonce header is not 6 characters of [A-Za-z0-9]."""

    error_code = "NONCE_INVALID"
    status = 400


class SignInvalidError(GatewayError):
    """The sign header is malformed or does not match the request."""

    error_code = "SIGN_INVALID"
    status = 401


class NonceReplayedError(GatewayError):
    """The appKey and nonce were already used."""

    error_code = "NONCE_REPLAYED"
    status = 409


class TokenInvalidError(GatewayError):
    """The Authorization header is missing, malformed, expired or issued to another appKey."""

    error_code = "TOKEN_INVALID"
    status = 401


class MethodNotAllowedError(GatewayError):
    """The route does not answer this HTTP method."""

    error_code = "METHOD_NOT_ALLOWED"
    status = 405


class BodyTooLargeError(GatewayError):
    """The request body exceeds the size limit."""

    error_code = "BODY_TOO_LARGE"
    status = 413


class BodyInvalidError(GatewayError):
    """The body is not strict UTF-8 JSON of the expected shape."""

    error_code = "BODY_INVALID"
    status = 400


class ValidationError(GatewayError):
    """An internal app's request has missing or mistyped fields."""

    error_code = "VALIDATION_ERROR"
    status = 400


class ApprovalNotFoundError(GatewayError):
    """No approval was ever sent or called back for this code."""

    error_code = "APPROVAL_NOT_FOUND"
    status = 404
    business = True


class ApprovalActiveError(GatewayError):
    """The code already has an approval in progress or agreed."""

    error_code = "APPROVAL_ACTIVE"
    status = 409
    business = True


class ApprovalNotOpenError(GatewayError):
    """Only an open approval (SUBMITTING, PENDING, CANCELLING) can be resolved by an operator."""

    error_code = "APPROVAL_NOT_OPEN"
    status = 409
    business = True


class ApprovalNotCancellableError(GatewayError):
    """Only a PENDING approval can be cancelled."""

    error_code = "APPROVAL_NOT_CANCELLABLE"
    status = 409
    business = True


class UpstreamRejectedError(GatewayError):
    """Zeyi answered and refused the request (a business exception); its errorCode is kept."""

    status = 422
    business = True

    def __init__(self, message: str, *, error_code: str | None, result=None, answer=None):
        super().__init__(message, result=result)
        self.error_code = error_code or "UPSTREAM_REJECTED"
        self.answer = answer


class UpstreamUnavailableError(GatewayError):
    """Zeyi could not be reached: the request never left, so nothing happened there."""

    error_code = "UPSTREAM_UNAVAILABLE"
    status = 502


class UpstreamOutcomeUnknownError(GatewayError):
    """The request may have reached Zeyi but no usable answer came back."""

    error_code = "UPSTREAM_OUTCOME_UNKNOWN"
    status = 504

    def __init__(self, message: str, *, result=None, status: int = 504, answer=None):
        super().__init__(message, result=result)
        self.status = status
        self.answer = answer


class UpstreamSystemError(UpstreamOutcomeUnknownError):
    """Zeyi answered with a failure that is not a business refusal (businessException false):
    a fault on its side, after which the approval may or may not exist. Its errorCode is kept."""

    def __init__(self, message: str, *, error_code: str | None, result=None, answer=None):
        super().__init__(message, result=result, status=502, answer=answer)
        self.error_code = error_code or "UPSTREAM_SYSTEM_ERROR"


class ServiceUnavailableError(GatewayError):
    """An AWS service could not be reached or failed; nothing was recorded."""

    error_code = "SERVICE_UNAVAILABLE"
    status = 503


class StoreError(GatewayError):
    """DynamoDB refused a write for a reason no retry can fix: a defect, not a conflict."""

    error_code = "INTERNAL_ERROR"
    status = 500


class IdempotencyKeyInvalidError(GatewayError):
    """The Idempotency-Key (or ``idempotencyKey``) is not 1 to 255 printable ASCII characters."""

    error_code = "IDEMPOTENCY_KEY_INVALID"
    status = 400


class IdempotencyInProgressError(GatewayError):
    """A request with this idempotency key is still being served: retry, and get its answer."""

    error_code = "IDEMPOTENCY_IN_PROGRESS"
    status = 409


class IdempotencyKeyReusedError(GatewayError):
    """The idempotency key was used, within its 24 hours, for a request with another body."""

    error_code = "IDEMPOTENCY_KEY_REUSED"
    status = 422


class ReplayedAnswerError(GatewayError):
    """The first answer to a request with this idempotency key, a failure, given again."""

    def __init__(self, status: int, body: dict):
        super().__init__(str(body.get("message") or ""), result=body.get("result"))
        self.status = status
        self.error_code = str(body.get("errorCode") or "INTERNAL_ERROR")
        self.business = bool(body.get("businessException"))
