"""What an internal app and a Zeyi operator do against a running sandbox, for the e2e tests."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

WAIT_SECONDS = 30.0


def send_body(code: str) -> dict:
    return {"code": code, "auditType": "CONTRACT", "originatorUsername": "E1001",
            "orgCode": "ORG-1",
            "auditFormList": [{"type": "text", "key": "金额", "value": "100.00 <含税> & 'ok'"},
                              {"type": "file", "key": "附件", "value": "https://f.example/a.pdf",
                               "extendValue": "a.pdf"}],
            "conditionParamList": [{"name": "amount", "value": "100"}]}


def cancel_body(code: str) -> dict:
    return {"code": code, "type": "CONTRACT", "remark": "录入错误", "username": "E1001"}


class Sandbox:
    """What an internal app and a Zeyi operator can do, against one running stack."""

    def __init__(self, gateway_url: str, zeyi_url: str):
        self.gateway = gateway_url
        self.zeyi = zeyi_url
        self.http = requests.Session()

    @staticmethod
    def new_code(prefix: str = "E2E") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    # internal app → gateway
    def send(self, code: str, body: dict | None = None) -> requests.Response:
        return self.http.post(f"{self.gateway}/audit/send", json=body or send_body(code),
                              timeout=60)

    def cancel(self, code: str) -> requests.Response:
        return self.http.post(f"{self.gateway}/audit/cancel", json=cancel_body(code), timeout=60)

    def get(self, code: str) -> dict:
        response = self.http.get(f"{self.gateway}/audit/{code}", timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def status(self, code: str) -> str:
        return self.get(code)["status"]

    def wait_status(self, code: str, wanted: str, timeout_seconds: float = WAIT_SECONDS) -> dict:
        deadline = time.monotonic() + timeout_seconds
        while True:
            result = self.get(code)
            if result["status"] == wanted or time.monotonic() > deadline:
                return result
            time.sleep(0.1)

    # Zeyi operator → simulator
    def decide(self, code: str, action: str) -> requests.Response:
        response = self.http.post(f"{self.zeyi}/_control/approvals/{code}/{action}",
                                  json={"auditUser": "王经理", "remark": f"e2e {action}"},
                                  timeout=30)
        assert response.status_code == 200, response.text
        return response

    def zeyi_approval(self, code: str, wait_seconds: float = 0) -> dict:
        response = self.http.get(f"{self.zeyi}/_control/approvals/{code}",
                                 params={"waitSeconds": wait_seconds}, timeout=wait_seconds + 30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_zeyi_approval(self, code: str, timeout_seconds: float = WAIT_SECONDS) -> dict:
        """Zeyi's approval of ``code`` once it exists (a slow send creates it late)."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            response = self.http.get(f"{self.zeyi}/_control/approvals/{code}", timeout=30)
            if response.status_code == 200 or time.monotonic() > deadline:
                assert response.status_code == 200, response.text
                return response.json()
            time.sleep(0.1)

    def zeyi_requests(self, code: str, kind: str | None = None) -> list[dict]:
        params = {"code": code}
        if kind:
            params["path"] = kind
        return self.http.get(f"{self.zeyi}/_control/requests", params=params,
                             timeout=30).json()["requests"]

    def add_fault(self, path: str, mode: str, **options) -> None:
        response = self.http.post(f"{self.zeyi}/_control/faults",
                                  json={"path": path, "mode": mode, **options}, timeout=30)
        assert response.status_code == 200, response.text

    def redeliver(self, code: str) -> None:
        response = self.http.post(f"{self.zeyi}/_control/approvals/{code}/redeliver", timeout=30)
        assert response.status_code == 200, response.text


def applied_callbacks(result: dict) -> list[dict]:
    return [callback for callback in result["callbacks"] if callback.get("disposition") == "applied"]


def run_all(function, items, workers: int = 16) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))
