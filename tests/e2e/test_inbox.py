"""The approver's inbox page in a real headless browser, against the three real processes: an
approval sent through the gateway shows up, a click decides it, and the page shows the gateway's
own record turning AGREED. Without Chromium the module skips itself, in one line saying how to
enable it."""
from __future__ import annotations

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

    card_of(browser, code).find_element(By.CSS_SELECTOR, 'button[data-action="agree"]').click()
    wait(browser, lambda: text_in(browser, code, ".gateway-status") == "AGREED",
         "the gateway's status AGREED on the page")
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
