"""Step Functions task tokens (chalicelib.approvals.task_tokens), against moto server's Step
Functions running real executions of examples/approval_workflow.asl.json.

moto runs an execution only with its ``execute_state_machine`` option, and cannot invoke a Lambda
function without Docker: the example's one Lambda task (``lambda:invoke.waitForTaskToken``) runs
here as the same state with an SQS ``sendMessage.waitForTaskToken`` resource and the same
payload. The test reads that message and invokes app.py's send_approval with it, as Lambda would;
the rest (the token, the pause, SendTaskSuccess/SendTaskFailure, the Catch branches) is moto's
real execution. The events function runs on the approvals table's real stream records."""
from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from chalicelib.approvals import task_tokens
from chalicelib.approvals.store import CallbackRecord, DynamoDBApprovalStore
from chalicelib.runtime import aws
from tests.conftest import APPROVALS_TABLE, EVENT_BUS_NAME, INBOUND, NONCES_TABLE
from tests.events_support import create_bus, stream_records
from tests.peer import send_body

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "approval_workflow.asl.json"
ROLE = "arn:aws:iam::123456789012:role/approval-workflow"


def _moto_config(url: str, execute: bool) -> None:
    request = urllib.request.Request(
        f"{url}/moto-api/config", method="POST",
        data=json.dumps({"stepfunctions": {"execute_state_machine": execute}}).encode())
    urllib.request.urlopen(request, timeout=10).read()  # noqa: S310 - loopback moto server


@pytest.fixture
def workflows(aws_env):
    """The example state machine on moto, its Lambda task swapped for SQS (see above)."""
    _moto_config(aws_env.url, True)
    create_bus(EVENT_BUS_NAME)
    sqs, sfn = aws.client("sqs"), aws.client("stepfunctions")
    queue = sqs.create_queue(QueueName="approval-asks")["QueueUrl"]
    definition = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    ask = definition["States"]["Ask for approval"]
    payload = dict(ask["Parameters"]["Payload"], caller="purchase-workflow")
    ask["Resource"] = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
    ask["Parameters"] = {"QueueUrl": queue, "MessageBody": payload}
    arn = sfn.create_state_machine(name="approval-workflow", roleArn=ROLE,
                                   definition=json.dumps(definition))["stateMachineArn"]
    try:
        yield Workflows(arn, queue)
    finally:
        _moto_config(aws_env.url, False)


class Workflows:
    def __init__(self, arn: str, queue: str):
        self.arn, self.queue = arn, queue
        self.tokens: list[str] = []

    def start(self, code: str, name: str | None = None) -> str:
        body = {k: v for k, v in send_body(code).items() if k != "conditionParamList"}
        return aws.client("stepfunctions").start_execution(
            stateMachineArn=self.arn, name=name or f"wf-{code}",
            input=json.dumps(body))["executionArn"]

    def next_ask(self) -> dict:
        """The payload the state sent to send_approval (here, to the queue); bounded wait."""
        sqs = aws.client("sqs")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = sqs.receive_message(QueueUrl=self.queue, WaitTimeSeconds=1).get(
                "Messages", [])
            if messages:
                sqs.delete_message(QueueUrl=self.queue,
                                   ReceiptHandle=messages[0]["ReceiptHandle"])
                return json.loads(messages[0]["Body"])
        raise AssertionError("the workflow sent no ask within 10 s")

    @staticmethod
    def finished(execution: str) -> dict:
        sfn = aws.client("stepfunctions")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            described = sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.05)
        raise AssertionError("the execution is still running after 10 s")

    @staticmethod
    def status(execution: str) -> str:
        return aws.client("stepfunctions").describe_execution(executionArn=execution)["status"]


def store():
    return DynamoDBApprovalStore(aws.client("dynamodb"), APPROVALS_TABLE, NONCES_TABLE)


def decide(code: str, type_: str, result: str | None, nonce: str) -> None:
    """Zeyi's callback, verified and parsed (the callback route's own tests cover the rest)."""
    store().record_callback(CallbackRecord(
        code=code, business_id=f"inst-{code}", type=type_, result=result, audit_type="purchase",
        audit_user="M01", remark="看过了", body="{}", app_key=INBOUND["appKey"], nonce=nonce), 1200)


def publish(gateway, records=None) -> dict:
    """The events function on the approvals table's stream records, as Lambda invokes it."""
    records = stream_records(APPROVALS_TABLE) if records is None else records
    return gateway.lambda_.invoke("publish_approval_events", {"Records": records}).payload


def attempt_of(gateway, code: str) -> dict:
    [attempt] = json.loads(gateway.http.get(f"/audit/{code}").body)["result"]["attempts"]
    return attempt


def sent_from_the_workflow(gateway, workflows, code: str) -> tuple[str, dict]:
    execution = workflows.start(code)
    ask = workflows.next_ask()
    assert ask["taskToken"] and ask["idempotencyKey"] == f"wf-{code}"
    answer = gateway.lambda_.invoke("send_approval", ask).payload
    workflows.tokens.append(ask["taskToken"])
    return execution, answer


def test_agreed_resumes_the_workflow_with_the_decision(gateway, zeyi, workflows, logs):
    execution, answer = sent_from_the_workflow(gateway, workflows, "TT-1")
    assert answer["success"] is True
    publish(gateway)
    assert workflows.status(execution) == "RUNNING"  # PENDING is not final: it keeps waiting

    decide("TT-1", "finish", "agree", "n0nce1")
    assert publish(gateway) == {"batchItemFailures": []}
    done = workflows.finished(execution)
    assert done["status"] == "SUCCEEDED"
    output = json.loads(done["output"])
    assert output["outcome"] == "agreed"
    decision = output["decision"]
    assert {k: decision[k] for k in ("code", "status", "attemptId", "businessId", "auditUser",
                                     "remark")} == {
        "code": "TT-1", "status": "AGREED", "attemptId": answer["result"]["attemptId"],
        "businessId": "inst-TT-1", "auditUser": "M01", "remark": "看过了"}
    assert decision["occurredAt"].endswith("Z")
    assert attempt_of(gateway, "TT-1")["taskAnswer"]["outcome"] == "answered"
    # The token went to Zeyi, the logs and the history nowhere.
    # The token went nowhere but Step Functions: not to Zeyi, the logs, the answer or history.
    [token] = workflows.tokens
    seen = json.dumps([zeyi.requests_log(), logs(), answer,
                       json.loads(gateway.http.get("/audit/TT-1").body)], ensure_ascii=False)
    assert token not in seen
    assert zeyi.requests_log(kind="send")[0]["json"] == {
        k: v for k, v in send_body("TT-1").items() if k != "conditionParamList"}


@pytest.mark.parametrize(("type_", "result", "error", "branch"), [
    ("finish", "refuse", "Approval.Refused", "refused"),
    ("terminate", None, "Approval.Terminated", "withdrawn"),
])
def test_a_refusal_or_termination_fails_the_task_with_a_name_the_workflow_catches(
        gateway, zeyi, workflows, type_, result, error, branch):
    execution, _ = sent_from_the_workflow(gateway, workflows, "TT-2")
    decide("TT-2", type_, result, "n0nce2")
    publish(gateway)
    done = workflows.finished(execution)
    assert done["status"] == "SUCCEEDED"  # the example's Catch took its branch
    output = json.loads(done["output"])
    assert (output["outcome"], output["error"]) == (branch, error)
    assert output["decision"]["code"] == "TT-2"
    assert output["decision"]["status"] == error.split(".")[1].upper()


def test_zeyi_refusing_the_send_fails_the_task_as_approval_failed(gateway, zeyi, workflows):
    zeyi.add_fault("send", "refuse")
    execution, answer = sent_from_the_workflow(gateway, workflows, "TT-3")
    assert answer["success"] is False
    publish(gateway)
    done = workflows.finished(execution)
    assert (done["status"], done.get("error")) == ("FAILED", "Approval.Failed")


@pytest.mark.parametrize("how", ["closed", "never issued"])
def test_a_token_step_functions_no_longer_knows_is_recorded_and_dropped(gateway, zeyi,
                                                                         workflows, how):
    if how == "closed":  # its task ended meanwhile (here: answered by someone else)
        execution = workflows.start("TT-4")
        ask = workflows.next_ask()
        assert gateway.lambda_.invoke("send_approval", ask).payload["success"] is True
        aws.client("stepfunctions").send_task_success(taskToken=ask["taskToken"],
                                                      output="{}")
        assert workflows.finished(execution)["status"] == "SUCCEEDED"
    else:
        answer = gateway.lambda_.invoke("send_approval", {
            **send_body("TT-4"), "taskToken": "AQB8AAAAKgAAAAMAAAAAAAAAAX-not-issued"}).payload
        assert answer["success"] is True
    decide("TT-4", "finish", "agree", "n0nce4")
    assert publish(gateway) == {"batchItemFailures": []}  # not retried
    answer = attempt_of(gateway, "TT-4")["taskAnswer"]
    assert answer["outcome"] == "dropped"
    assert answer["reason"] in {"TaskDoesNotExist", "TaskTimedOut", "InvalidToken"}
    assert "taskToken" not in json.dumps(attempt_of(gateway, "TT-4"))
    assert publish(gateway) == {"batchItemFailures": []}  # and not tried again


def test_a_redelivered_batch_does_not_answer_twice(gateway, zeyi, workflows, logs):
    execution, _ = sent_from_the_workflow(gateway, workflows, "TT-5")
    decide("TT-5", "finish", "agree", "n0nce5")
    records = stream_records(APPROVALS_TABLE)
    publish(gateway, records)
    first = attempt_of(gateway, "TT-5")["taskAnswer"]
    assert workflows.finished(execution)["status"] == "SUCCEEDED"

    assert publish(gateway, records) == {"batchItemFailures": []}
    assert attempt_of(gateway, "TT-5")["taskAnswer"] == first  # still "answered", once
    answered = [line for line in logs() if line.get("message") == "task token answered"]
    assert len(answered) == 1


def test_only_the_attempt_that_carried_the_token_answers_it(gateway, zeyi, workflows):
    # A send of another code without a token reaches a final status: no Step Functions call.
    gateway.lambda_.invoke("send_approval", send_body("TT-6"))
    decide("TT-6", "finish", "agree", "n0nce6")
    execution, _ = sent_from_the_workflow(gateway, workflows, "TT-7")
    assert publish(gateway) == {"batchItemFailures": []}
    assert workflows.status(execution) == "RUNNING"
    assert "taskAnswer" not in attempt_of(gateway, "TT-6")


def test_a_send_the_gateway_refuses_fails_the_task_at_once(gateway, zeyi, workflows):
    execution = workflows.start(".HT1", name="wf-invalid")  # a code may not start with a dot
    answer = gateway.lambda_.invoke("send_approval", workflows.next_ask()).payload
    assert answer["errorCode"] == "VALIDATION_ERROR"
    done = workflows.finished(execution)
    assert (done["status"], done.get("error")) == ("FAILED", "Approval.NotSent")
    assert json.loads(done["cause"])["errorCode"] == "VALIDATION_ERROR"
    # A code another request holds: refused as active, and the task fails as well.
    assert gateway.lambda_.invoke("send_approval", send_body("TT-9")).payload["success"]
    execution = workflows.start("TT-9")
    answer = gateway.lambda_.invoke("send_approval", workflows.next_ask()).payload
    assert answer["errorCode"] == "APPROVAL_ACTIVE"
    done = workflows.finished(execution)
    assert (done["status"], done.get("error")) == ("FAILED", "Approval.NotSent")
    assert len(zeyi.requests_log(kind="send")) == 1


@pytest.mark.parametrize("token", ["", 7, "x" * 2049])
def test_an_unusable_token_is_refused_and_nothing_is_sent(gateway, zeyi, token):
    answer = gateway.lambda_.invoke("send_approval", {**send_body("TT-8"),
                                                      "taskToken": token}).payload
    assert answer["errorCode"] == "VALIDATION_ERROR" and "taskToken" in answer["message"]
    assert zeyi.requests_log() == []


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt) read as plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


def test_the_example_catches_every_error_the_gateway_sends_and_its_template_fills_it():
    text = EXAMPLE.read_text(encoding="utf-8")
    definition = json.loads(text)
    caught = {name for catcher in definition["States"]["Ask for approval"]["Catch"]
              for name in catcher["ErrorEquals"]}
    assert set(task_tokens.ERROR_NAMES.values()) | {"Approval.Revoked",
                                                    task_tokens.NOT_SENT} <= caught
    source = EXAMPLE.parent.joinpath("approval_workflow.yaml").read_text(encoding="utf-8")
    template = yaml.load(source, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass
    substitutions = template["Resources"]["ApprovalWorkflow"]["Properties"][
        "DefinitionSubstitutions"]
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(substitutions)
