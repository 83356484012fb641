"""A zero-latency stand-in for DynamoDB, Secrets Manager, Zeyi and the X-Ray daemon.

``python -m bench.stand_in`` prints one JSON line with its ports, then serves until stdin closes
(its parent is gone). The AWS endpoint answers every DynamoDB and Secrets Manager call the
gateway makes with a successful, plausible answer at once, and counts them by operation;
``GET /__bench/counts`` and ``POST /__bench/reset`` read and clear the counts. It checks nothing:
what it stands in for is the network and the services' own time, which the benchmark leaves out.
A minimal HTTP/1.1 server on raw sockets, so that its own overhead stays small next to botocore's.
"""
from __future__ import annotations

import json
import socket
import sys
import threading
from collections import Counter

SECRETS = {
    "bench/outbound": {"appKey": "bench-outbound-key",
                       "appSecret": "0123456789abcdef0123456789abcdef", "iv": "0102030405060708"},
    "bench/inbound": {"credentials": [{"appKey": "bench-inbound-key",
                                       "appSecret": "fedcba9876543210fedcba9876543210"}]},
    "bench/token-key": {"keys": ["bench-token-key-0123456789abcdefghijklmnopqrstuvwxyz"]},
}
PENDING_PREFIX = "BENCH-PENDING"  # codes whose HEAD the stand-in reports as PENDING
ZEYI_ANSWER = json.dumps({"success": True, "businessException": False, "errorCode": None,
                          "message": None, "result": {"businessId": "bench-instance"}}).encode()

_counts: Counter = Counter()
_lock = threading.Lock()


def _aws_answer(target: str, body: bytes) -> tuple[int, bytes]:
    service, _, operation = target.partition(".")
    name = "secretsmanager" if service == "secretsmanager" else "dynamodb"
    with _lock:
        _counts[f"{name}.{operation}"] += 1
    request = json.loads(body or b"{}")
    if operation == "GetSecretValue":
        secret_id = request["SecretId"]
        return 200, json.dumps({"ARN": f"arn:aws:secretsmanager:us-east-1:0:secret:{secret_id}",
                                "Name": secret_id, "VersionId": "v1",
                                "SecretString": json.dumps(SECRETS[secret_id])}).encode()
    if operation == "GetItem":
        code = request["Key"]["code"]["S"]
        if code.startswith(PENDING_PREFIX):
            return 200, json.dumps({"Item": _head(code)}).encode()
        return 200, b"{}"
    if operation == "Query":
        if request.get("IndexName"):
            return 200, b'{"Items": [], "Count": 0}'
        code = request["ExpressionAttributeValues"][":code"]["S"]
        return 200, json.dumps({"Items": [_head(code)], "Count": 1}).encode()
    return 200, b"{}"  # TransactWriteItems, PutItem, UpdateItem: committed


def _head(code: str) -> dict:
    return {"code": {"S": code}, "sk": {"S": "HEAD"}, "status": {"S": "PENDING"},
            "attemptId": {"S": "0000000000001-bench"}, "version": {"N": "2"},
            "updatedAt": {"N": "1"}, "changedBy": {"S": "answer"}}


def _serve_connection(conn: socket.socket, answer) -> None:
    buffer = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
            status, payload = answer(method, path, headers, body)
            conn.sendall(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                         b"x-amzn-RequestId: bench\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, len(payload), payload))


def _aws(method, path, headers, body):
    if path == "/__bench/counts":
        with _lock:
            return 200, json.dumps(dict(_counts)).encode()
    if path == "/__bench/reset":
        with _lock:
            _counts.clear()
        return 200, b"{}"
    return _aws_answer(headers.get("x-amz-target", ""), body)


def _zeyi(method, path, headers, body):
    return 200, ZEYI_ANSWER


def _listen(answer) -> int:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(128)

    def accept():
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_serve_connection, args=(conn, answer), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def _xray_sink() -> int:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    def drain():
        while True:
            sink.recv(65536)

    threading.Thread(target=drain, daemon=True).start()
    return sink.getsockname()[1]


def main() -> int:
    ports = {"aws": _listen(_aws), "zeyi": _listen(_zeyi), "xray": _xray_sink()}
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # until the parent closes it, or dies
    return 0


if __name__ == "__main__":
    sys.exit(main())
