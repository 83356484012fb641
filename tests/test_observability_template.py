"""The observability half of the CloudFormation path (infra/resources.yaml merged by `chalice
package`): every function's log group with a retention, the API's access logs, throttling and
tracing, the alarms the issue asks for, each on a metric the code really writes, and a dashboard.
tests/test_deploy.py lints the same merged template for aws and aws-cn."""
from __future__ import annotations

import json
import re
from functools import cache

import pytest

from chalicelib.approvals import states
from chalicelib.approvals import stuck as stuck_approvals
from chalicelib.runtime import metrics, telemetry
from ops.package import package
from ops.stage_config import API_HANDLER
from tests.test_deploy import (
    CONFIG,
    DEPLOYED_STAGES,
    ROOT,
    _functions,
    handler_entries,
    load_cfn,
    load_policy,
    policy_file,
    stage_of,
)

ALARMS = {"api-5xx-rate", "auth-failures", "zeyi-upstream-failures", "stuck-approvals",
          "callback-p99-latency", "events-dlq-depth", "events-iterator-age"}
AUTH_FAILURES = {"SIGN_INVALID", "TOKEN_INVALID", "NONCE_REPLAYED"}


@cache
def merged(stage: str, tmp_root: str) -> dict:
    from pathlib import Path

    result = package(stage, Path(tmp_root) / stage, require_vpc=False,
                     merge_template=ROOT / "infra" / "resources.yaml")
    return _normalized(load_cfn(result.template))


def _normalized(value):
    """The written template's ``Ref:`` as ``Fn::Ref``, the form load_cfn gives ``!Ref``."""
    if isinstance(value, dict):
        return {("Fn::Ref" if key == "Ref" else key): _normalized(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    return value


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("observability"))
    return lambda stage: merged(stage, root)


def sub(value, stage: str, mapping: dict | None = None) -> str:
    """A !Sub / plain string with ${Stage} (and ``mapping``'s names) filled in."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    text = text.replace("${Stage}", stage)
    for name, replacement in (mapping or {}).items():
        text = text.replace("${" + name + "}", replacement)
    return text


def find_in_map(template: dict, value, stage: str):
    mapping, key, name = value["Fn::FindInMap"]
    assert key == {"Fn::Ref": "Stage"}
    return template["Mappings"][mapping][stage][name]


def chalice_name(cfn_name: str) -> str:
    from chalice.utils import to_cfn_resource_name

    names = {to_cfn_resource_name(fn): fn for fn in handler_entries() if fn != API_HANDLER}
    names["APIHandler"] = API_HANDLER
    return names[cfn_name]


def alarms(template: dict) -> dict[str, dict]:
    return {name: r["Properties"] for name, r in template["Resources"].items()
            if r["Type"] == "AWS::CloudWatch::Alarm"}


def metric_stats(alarm: dict) -> list[dict]:
    """Each metric an alarm reads: {namespace, name, dimensions}."""
    if "MetricName" in alarm:
        found = [(alarm["Namespace"], alarm["MetricName"], alarm.get("Dimensions", []))]
    else:
        found = [(q["MetricStat"]["Metric"]["Namespace"], q["MetricStat"]["Metric"]["MetricName"],
                  q["MetricStat"]["Metric"].get("Dimensions", []))
                 for q in alarm["Metrics"] if "MetricStat" in q]
    return [{"namespace": ns, "name": name, "dimensions": {d["Name"]: d["Value"] for d in dims}}
            for ns, name, dims in found]


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_every_function_logs_to_its_own_group_with_a_retention(template, stage):
    cfn = template(stage)
    stage_config = stage_of(stage)
    for cfn_name, function in _functions(cfn).items():
        name = chalice_name(cfn_name)
        properties = function["Properties"]
        # The name `chalice deploy` gives it: the one its policy file grants a log group for.
        assert sub(properties["FunctionName"], stage) == stage_config.function_name(name)
        group_ref = properties["LoggingConfig"]["LogGroup"]["Fn::Ref"]
        group = cfn["Resources"][group_ref]
        assert group["Type"] == "AWS::Logs::LogGroup" and group["DeletionPolicy"] == "Retain"
        group_name = sub(group["Properties"]["LogGroupName"], stage)
        assert group_name == stage_config.log_group(name)
        days = find_in_map(cfn, group["Properties"]["RetentionInDays"], stage)
        assert days in {30, 90, 180, 365}, days
        granted = [statement["Resource"] for statement in load_policy(
            policy_file(stage, name))["Statement"] if statement.get("Sid") == "OwnLogGroup"]
        assert f"arn:*:logs:*:*:log-group:{group_name}" in granted[0]


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_the_api_logs_each_request_as_json_is_traced_and_throttled(template, stage):
    cfn = template(stage)
    (api,) = [r["Properties"] for r in cfn["Resources"].values()
              if r["Type"] == "AWS::Serverless::Api"]
    assert api["TracingEnabled"] is True
    fields = json.loads(api["AccessLogSetting"]["Format"])
    # requestId is what the gateway's log lines call apiRequestId: the two logs join on it.
    assert fields["requestId"] == "$context.requestId"
    assert {"status", "resourcePath", "httpMethod", "ip", "responseLatency",
            "integrationLatency", "xrayTraceId"} <= fields.keys()
    stage_wide, *methods = api["MethodSettings"]
    assert (stage_wide["ResourcePath"], stage_wide["HttpMethod"]) == ("/*", "*")
    rate = find_in_map(cfn, stage_wide["ThrottlingRateLimit"], stage)
    burst = find_in_map(cfn, stage_wide["ThrottlingBurstLimit"], stage)
    assert 0 < rate <= burst
    for method in methods:  # a method's own settings would drop the stage's throttling
        assert (method["ThrottlingRateLimit"], method["ThrottlingBurstLimit"]) == (
            stage_wide["ThrottlingRateLimit"], stage_wide["ThrottlingBurstLimit"])
    destination = api["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"]
    assert cfn["Resources"][destination[0]]["Type"] == "AWS::Logs::LogGroup"


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_every_function_has_an_errors_and_a_throttles_alarm(template, stage):
    cfn = template(stage)
    found = alarms(cfn)
    for cfn_name in _functions(cfn):
        watched = {(a["MetricName"], a["Namespace"]) for a in found.values()
                   if a.get("Dimensions") == [{"Name": "FunctionName",
                                               "Value": {"Fn::Ref": cfn_name}}]}
        # A stream's reader also has its delay behind the table watched.
        stream = {("IteratorAge", "AWS/Lambda")} if cfn_name == "PublishApprovalEvents" else set()
        assert watched == {("Errors", "AWS/Lambda"), ("Throttles", "AWS/Lambda")} | stream, (
            cfn_name)


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_alarms_go_to_the_stages_topic_and_read_metrics_the_code_writes(template, stage):
    cfn = template(stage)
    env = stage_of(stage).environment
    namespace = env[metrics.NAMESPACE_ENV]
    assert namespace == f"jinrun-approval-gateway/{stage}"
    catalogue = {getattr(metrics, name) for name in dir(metrics)
                 if name.isupper() and isinstance(getattr(metrics, name), str)}
    from chalicelib import errors

    produced = {
        "errorCode": {c.error_code for c in vars(errors).values() if isinstance(c, type)
                      and issubclass(c, errors.GatewayError)}
        | {telemetry.UPSTREAM_REJECTED, telemetry.UPSTREAM_SYSTEM_ERROR},
        "outcome": {states.PENDING, states.CANCELLING, telemetry.FAILED,
                    telemetry.UPSTREAM_UNAVAILABLE, telemetry.UPSTREAM_OUTCOME_UNKNOWN},
        "status": set(stuck_approvals.SEARCHED),
        "service": {env[metrics.SERVICE_ENV]},
    }
    names = set()
    for logical, alarm in alarms(cfn).items():
        assert alarm["AlarmActions"] == [{"Fn::Ref": "AlarmTopic"}], logical
        assert alarm["OKActions"] == [{"Fn::Ref": "AlarmTopic"}], logical
        assert "docs/operations.md" in alarm["AlarmDescription"], logical
        names.add(sub(alarm["AlarmName"], stage).removeprefix(f"jinrun-approval-gateway-{stage}-"))
        for metric in metric_stats(alarm):
            if sub(metric["namespace"], stage).startswith("AWS/"):
                continue
            assert sub(metric["namespace"], stage) == namespace, logical
            assert metric["name"] in catalogue, (logical, metric["name"])
            for dimension, value in metric["dimensions"].items():
                assert value in produced[dimension], (logical, dimension, value)
    functions = {chalice_name(name) for name in _functions(cfn)}
    assert names == ALARMS | {f"{fn}-{kind}" for fn in functions
                              for kind in ("errors", "throttles")}
    topic = cfn["Resources"]["AlarmTopic"]["Properties"]
    assert sub(topic["TopicName"], stage) == f"jinrun-approval-gateway-{stage}-alarms"


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_the_alarms_the_issue_names_watch_what_they_say(template, stage):
    found = {sub(a["AlarmName"], stage).rsplit(f"{stage}-", 1)[1]: a
             for a in alarms(template(stage)).values()}
    auth = {m["dimensions"]["errorCode"] for m in metric_stats(found["auth-failures"])}
    assert auth == AUTH_FAILURES
    upstream = {(m["name"], m["dimensions"]["outcome"])
                for m in metric_stats(found["zeyi-upstream-failures"])}
    assert {("Sends", "UPSTREAM_UNAVAILABLE"), ("Sends", "UPSTREAM_OUTCOME_UNKNOWN"),
            ("Cancels", "UPSTREAM_UNAVAILABLE"), ("Cancels", "UPSTREAM_OUTCOME_UNKNOWN")} <= upstream
    assert {m["dimensions"]["status"] for m in metric_stats(found["stuck-approvals"])} == {
        "SUBMITTING", "CANCELLING", "PENDING"}
    assert found["stuck-approvals"]["Threshold"] == 0
    assert found["stuck-approvals"]["ComparisonOperator"] == "GreaterThanThreshold"
    latency = found["callback-p99-latency"]
    assert (latency["Namespace"], latency["MetricName"], latency["ExtendedStatistic"]) == (
        "AWS/ApiGateway", "Latency", "p99")
    watched = {d["Name"]: sub(d["Value"], stage) for d in latency["Dimensions"]}
    assert (watched["Resource"], watched["Method"]) == ("/dingtalkAudit/callback", "POST")
    # API Gateway publishes that method's metrics only because its settings ask for them.
    (api_settings,) = [r["Properties"] for r in template(stage)["Resources"].values()
                       if r["Type"] == "AWS::Serverless::Api"]
    (callback,) = [s for s in api_settings["MethodSettings"] if s.get("MetricsEnabled")]
    assert (callback["ResourcePath"], callback["HttpMethod"]) == (
        "/~1dingtalkAudit~1callback", "POST")
    dead_letters = found["events-dlq-depth"]
    assert (dead_letters["Namespace"], dead_letters["MetricName"], dead_letters["Threshold"],
            dead_letters["ComparisonOperator"]) == (
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", 0, "GreaterThanThreshold")
    (queue,) = [d["Value"]["Fn::GetAtt"] for d in dead_letters["Dimensions"]]
    assert queue == ["ApprovalEventsDeadLetterQueue", "QueueName"]
    five = found["api-5xx-rate"]
    assert five["MetricName"] == "5XXError" and five["Statistic"] == "Average"
    dimensions = {d["Name"]: d["Value"] for d in five["Dimensions"]}
    assert dimensions["Stage"] == stage_of(stage).settings["api_gateway_stage"]
    (api,) = [r["Properties"] for r in template(stage)["Resources"].values()
              if r["Type"] == "AWS::Serverless::Api"]
    assert sub(dimensions["ApiName"], stage) == sub(api["Name"], stage)


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_the_dashboard_is_json_and_shows_every_alarm(template, stage):
    cfn = template(stage)
    body = cfn["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    referenced = set(re.findall(r"\$\{([A-Za-z0-9]+)(?:\.Arn)?\}", body)) - {"Stage"}
    assert referenced <= cfn["Resources"].keys(), referenced - cfn["Resources"].keys()
    dashboard = json.loads(body)  # ${...} sits inside strings only
    (alarm_widget,) = [w for w in dashboard["widgets"] if w["type"] == "alarm"]
    shown = {re.fullmatch(r"\$\{(\w+)\.Arn\}", arn)[1]
             for arn in alarm_widget["properties"]["alarms"]}
    assert shown == alarms(cfn).keys()
    titles = " ".join(w["properties"].get("title", "") for w in dashboard["widgets"])
    for flow in ("callbacks", "Sends", "Cancels", "Zeyi call latency", "Stuck approvals",
                 "Cold starts", "API Gateway", "Lambda errors", "Approval events"):
        assert flow in titles, flow


def test_every_alarm_has_a_runbook_entry():
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in ALARMS | {"lambda-errors", "lambda-throttles"}:
        assert re.search(rf"^#{{3,4}} `{re.escape(name)}`", operations, re.MULTILINE), name


def test_reserved_concurrency_is_set_per_function_and_stage():
    for stage in DEPLOYED_STAGES:
        functions = stage_of(stage).settings["lambda_functions"]
        for name in handler_entries():
            assert isinstance(functions[name].get("reserved_concurrency"), int), (stage, name)
        # One search at a time: two would report every stuck code twice.
        assert functions["find_stuck_approvals"]["reserved_concurrency"] == 1
    assert CONFIG["xray"] is True


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_api_gateways_own_answers_are_the_envelope_too(template, stage):
    cfn = template(stage)
    answers = {r["Properties"]["ResponseType"]: r["Properties"] for r in cfn["Resources"].values()
               if r["Type"] == "AWS::ApiGateway::GatewayResponse"}
    assert answers.keys() == {"DEFAULT_4XX", "DEFAULT_5XX"}
    (api,) = [name for name, r in cfn["Resources"].items() if r["Type"] == "AWS::Serverless::Api"]
    for kind, answer in answers.items():
        assert answer["RestApiId"] == {"Fn::Ref": api}, kind
        # What API Gateway fills in: $context.error.messageString is a quoted JSON string.
        body = answer["ResponseTemplates"]["application/json"].replace(
            "$context.error.responseType", "MISSING_AUTHENTICATION_TOKEN").replace(
            "$context.error.messageString", json.dumps('Missing "Authentication" Token'))
        assert json.loads(body) == {
            "success": False, "businessException": False,
            "errorCode": "MISSING_AUTHENTICATION_TOKEN",
            "message": 'Missing "Authentication" Token', "result": None}, kind
