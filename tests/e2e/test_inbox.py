"""The approver's inbox page in a real headless browser, against the three real processes: an
approval sent through the gateway shows up, a click decides it, and the page shows the gateway's
own record turning AGREED. Without Chromium the module skips itself, in one line saying how to
enable it."""
from __future__ import annotations

import json

import pytest

from tests.e2e.client import Sandbox
from tests.e2e.conftest import ARTIFACTS_DIR, browser_missing

if browser_missing() is not None:
    pytest.skip(browser_missing(), allow_module_level=True)

WAIT_SECONDS = 30


def contract(code: str) -> dict:
    return {"code": code, "auditType": "CONTRACT", "originatorUsername": "E1001",
            "orgCode": "ORG-1",
            "auditFormList": [
                {"type": "text", "key": "合同金额", "value": "12,800.00 元（含税）"},
                {"type": "text", "key": "供应商", "value": "上海则一供应链 <script>alert(1)</script>"},
                {"type": "file", "key": "合同附件", "value": "https://files.example/contract.pdf",
                 "extendValue": "采购合同.pdf"}],
            "conditionParamList": [{"name": "amount", "value": "12800"}]}


def wait(browser, condition, what: str):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_SECONDS, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException)
                         ).until(lambda _: condition(), message=f"waiting for {what}")


def card_of(browser, code: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'section.approval[data-code="{code}"]')


def text_in(browser, code: str, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return card_of(browser, code).find_element(By.CSS_SELECTOR, selector).text


@pytest.mark.timeout(180)
def test_an_approver_agrees_in_the_inbox_and_sees_the_gateway_turn_agreed(
        sandbox: Sandbox, stack, browser):
    from selenium.webdriver.common.by import By

    code = sandbox.new_code("INBOX")
    assert sandbox.send(code, contract(code)).status_code == 200
    browser.get(f"{stack.zeyi_url}/")

    card = wait(browser, lambda: card_of(browser, code), f"the card of {code}")
    assert card.find_element(By.XPATH, "..").get_attribute("id") == "pending"
    fields = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td")
              for row in card.find_elements(By.CSS_SELECTOR, "table.fields tr")}
    assert fields["合同金额"].text == "12,800.00 元（含税）"
    assert fields["供应商"].text == "上海则一供应链 <script>alert(1)</script>"  # text, not HTML
    link = fields["合同附件"].find_element(By.TAG_NAME, "a")
    assert (link.text, link.get_attribute("href")) == (
        "采购合同.pdf", "https://files.example/contract.pdf")
    assert wait(browser, lambda: text_in(browser, code, ".gateway-status") == "PENDING",
                "the gateway's status PENDING")

    remark = card.find_element(By.CSS_SELECTOR, "input.remark")
    remark.send_keys("同意，按合同付款")
    # Another approval arrives and the page redraws: what the approver typed stays.
    other = sandbox.new_code("INBOX")
    assert sandbox.send(other, contract(other)).status_code == 200
    wait(browser, lambda: card_of(browser, other), f"the card of {other}")
    assert card_of(browser, code).find_element(
        By.CSS_SELECTOR, "input.remark").get_attribute("value") == "同意，按合同付款"

    assert "Zeyi's answer to a send names no instance" in text_in(browser, code, ".instance")
    # The reader opens the raw record; it stays open while the view redraws.
    card_of(browser, code).find_element(By.CSS_SELECTOR, ".gateway details.raw summary").click()

    card_of(browser, code).find_element(By.CSS_SELECTOR, 'button[data-action="agree"]').click()
    wait(browser, lambda: text_in(browser, code, ".gateway-status") == "AGREED",
         "the gateway's status AGREED on the page")
    # The answer to the click is still there, now that the card has moved to "decided".
    assert text_in(browser, code, ".card-feedback") == "agree: done, callback queued"
    wait(browser, lambda: text_in(browser, code, ".gateway .disposition")
         == "applied: it moved this approval to AGREED", "the callback's disposition in words")
    assert text_in(browser, code, ".instance") == f"instance {sandbox.get(code)['businessId']}"
    assert json.loads(text_in(browser, code, ".gateway details.raw .json"))["status"] == "AGREED"
    assert sandbox.status(code) == "AGREED"  # the page shows what the gateway holds
    assert text_in(browser, code, ".zeyi-status") == "AGREED"
    assert wait(browser, lambda: text_in(browser, code, ".delivery .delivery-status")
                == "delivered", "the callback delivered")
    decision = text_in(browser, code, ".part-deliveries")
    assert "by 王经理" in decision and "同意，按合同付款" in decision
    assert card_of(browser, code).find_element(By.XPATH, "..").get_attribute("id") == "decided"
    callback = sandbox.zeyi_approval(code)["callbacks"][0]["body"]
    assert (callback["auditUser"], callback["remark"]) == ("王经理", "同意，按合同付款")

    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, arguments[0].offsetTop - 70);", card_of(browser, code))
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "inbox.png"))
    sandbox.decide(other, "refuse")


@pytest.mark.timeout(180)
def test_an_ended_approval_can_be_revoked_from_the_inbox(sandbox: Sandbox, stack, browser):
    from selenium.webdriver.common.by import By

    code = sandbox.new_code("INBOX")
    assert sandbox.send(code, contract(code)).status_code == 200
    sandbox.decide(code, "refuse")
    sandbox.wait_status(code, "REFUSED")
    browser.get(f"{stack.zeyi_url}/")
    wait(browser, lambda: text_in(browser, code, ".zeyi-status") == "REFUSED", "REFUSED")
    assert [button.get_attribute("data-action") for button in card_of(browser, code)
            .find_elements(By.CSS_SELECTOR, ".part-actions button")] == ["terminate"]
    card_of(browser, code).find_element(By.CSS_SELECTOR, 'button[data-action="terminate"]').click()
    wait(browser, lambda: [e.text for e in card_of(browser, code).find_elements(
        By.CSS_SELECTOR, ".delivery .delivery-status")] == ["delivered", "delivered"],
        "the terminate callback delivered")
    assert text_in(browser, code, ".zeyi-status") == "REFUSED"  # Zeyi keeps its decision
    assert "revoked (terminate) by 王经理" in text_in(browser, code, ".part-deliveries")
    zeyi = sandbox.zeyi_approval(code)
    assert [c["type"] for c in zeyi["callbacks"]] == ["finish", "terminate"]
    assert zeyi["callbacks"][1]["body"]["businessId"] == zeyi["businessId"]

    # The gateway's view, as a person reads it: what each callback did, in words, numbered
    # within this approval (the simulator has delivered many other callbacks by now).
    wait(browser, lambda: len(card_of(browser, code).find_elements(
        By.CSS_SELECTOR, ".gateway .disposition")) == 2, "both callbacks in the gateway's view")
    assert [e.text for e in card_of(browser, code).find_elements(
        By.CSS_SELECTOR, ".gateway .disposition")] == [
        "applied: it moved this approval to REFUSED",
        "ignored: this approval had already been decided (recorded only)"]
    assert [e.text.split(" · ")[0] for e in card_of(browser, code).find_elements(
        By.CSS_SELECTOR, ".delivery strong")] == ["callback 1", "callback 2"]
    assert text_in(browser, code, ".status-words") == "refused; the code may be sent again"
    assert text_in(browser, code, ".attempt") == "attempt 1 of 1"

    # A decided card fits on one screen, and the raw record is one click away.
    browser.execute_script("window.scrollTo(0, arguments[0].offsetTop - 70);",
                           card_of(browser, code))
    screen = browser.execute_script("return window.innerHeight")
    height = card_of(browser, code).rect["height"]
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS_DIR / "inbox-decided.png"))
    assert height <= screen * 0.6, (height, screen)
    raw = card_of(browser, code).find_element(By.CSS_SELECTOR, ".gateway details.raw")
    assert not raw.find_element(By.CSS_SELECTOR, ".json").is_displayed()
    raw.find_element(By.TAG_NAME, "summary").click()
    record = json.loads(raw.find_element(By.CSS_SELECTOR, ".json").text)
    assert record == sandbox.get(code)

    # Sent again: the view is of the new attempt, and the old callbacks say whose they were.
    assert sandbox.send(code, contract(code)).status_code == 200
    wait(browser, lambda: text_in(browser, code, ".gateway .attempt").startswith("attempt 2 of 2"),
         "the second attempt")
    assert text_in(browser, code, ".gateway-status") == "PENDING"
    assert all(item.text.split("\n")[0].endswith("(attempt 1)") for item in card_of(
        browser, code).find_elements(By.CSS_SELECTOR, ".gateway-callbacks li"))
    sandbox.decide(code, "refuse")


@pytest.mark.timeout(120)
def test_the_empty_page_hint_comes_back_once_nothing_is_pending(browser):
    """A simulator of its own (no gateway), so no other test's approval is on the page."""
    import requests
    from selenium.webdriver.common.by import By

    from sandbox.zeyi import SimulatorConfig, ZeyiSimulator, load_credentials
    from sandbox.zeyi_protocol import signed_headers

    outbound, inbound = load_credentials()
    simulator = ZeyiSimulator(SimulatorConfig(outbound=outbound, inbound=inbound, port=0)).start()
    try:
        browser.get(f"{simulator.url}/")
        hint = "No pending approval: send one through the gateway (POST /audit/send)."

        def pending_text():
            return browser.find_element(By.ID, "pending").text.replace("\n", " ")

        wait(browser, lambda: "live" in browser.find_element(By.ID, "conn").text, "the first poll")
        assert " ".join(pending_text().split()) == hint
        body = json.dumps(contract("EMPTY-1"), ensure_ascii=False).encode()
        answer = requests.post(f"{simulator.url}/tms-service-api/audit/send", data=body,
                               headers={**signed_headers(outbound, body),
                                        "Content-Type": "application/json"}, timeout=30).json()
        assert answer["success"], answer
        wait(browser, lambda: card_of(browser, "EMPTY-1"), "the card")
        assert "send one through the gateway" not in pending_text()
        card_of(browser, "EMPTY-1").find_element(
            By.CSS_SELECTOR, 'button[data-action="refuse"]').click()
        wait(browser, lambda: " ".join(pending_text().split()) == hint, "the hint again")
        assert text_in(browser, "EMPTY-1", ".card-feedback") == "refuse: done, callback queued"
    finally:
        simulator.stop(timeout_seconds=2.0)
