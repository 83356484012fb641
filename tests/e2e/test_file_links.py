"""A file field end to end in a real headless browser: an internal app uploads a PDF with a
Chinese name into moto's S3 through the gateway, sends it by fileId, and the approver clicks the
link on the inbox page: the browser receives exactly that file, under its Chinese name, and the
gateway counts the click. Without Chromium the module skips itself."""
from __future__ import annotations

import time

import pytest
import requests

from tests.e2e.client import Sandbox
from tests.e2e.conftest import browser_missing
from tests.e2e.test_inbox import card_of, contract, wait

if browser_missing() is not None:
    pytest.skip(browser_missing(), allow_module_level=True)

NAME = "采购合同（第3号）.pdf"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
DOWNLOAD_SECONDS = 30


def upload(gateway_url: str, name: str, data: bytes) -> str:
    answer = requests.post(f"{gateway_url}/files", json={
        "fileName": name, "contentType": "application/pdf", "size": len(data)}, timeout=10)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    form = result["upload"]
    stored = requests.post(form["url"], data=form["fields"], files={"file": (name, data)},
                           timeout=10)
    assert stored.status_code == 204, stored.text
    return result["fileId"]


def downloaded(directory) -> list:
    return [path for path in directory.iterdir() if not path.name.endswith(".crdownload")]


@pytest.mark.timeout(180)
def test_the_approver_clicks_the_file_link_and_the_browser_receives_the_file(
        sandbox: Sandbox, stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    code = sandbox.new_code("FILE")
    body = contract(code)
    body["auditFormList"][2] = {"type": "file", "key": "合同附件",
                                "value": upload(stack.gateway_url, NAME, PDF)}
    sent = sandbox.send(code, body)
    assert sent.status_code == 200, sent.text

    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(tmp_path), "eventsEnabled": True})
    browser.get(f"{stack.zeyi_url}/")
    card = wait(browser, lambda: card_of(browser, code), f"the card of {code}")
    link = card.find_element(By.CSS_SELECTOR, 'tr[data-key="合同附件"] a')
    # What Zeyi received: the gateway's stable link, named by the file (extendValue).
    assert link.text == NAME
    assert link.get_attribute("href").startswith(f"{stack.gateway_url}/files/f1.")
    link.click()

    deadline = time.monotonic() + DOWNLOAD_SECONDS
    while not downloaded(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    (received,) = downloaded(tmp_path)
    assert received.name == NAME
    assert received.read_bytes() == PDF

    attempt = sandbox.get(code)["attempts"][0]
    assert attempt["fileClickCount"] == 1
    assert attempt["request"]["auditFormList"][2]["value"].startswith("file-")
    browser.switch_to.window(browser.window_handles[0])
    wait(browser, lambda: "fileClickCount" in card_of(browser, code).text,
         "the click count in the gateway's view on the page")
    sandbox.decide(code, "agree")
