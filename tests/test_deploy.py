"""Deployability: each Lambda function's role allows exactly the AWS calls that function's code path
makes, on exactly its stage's tables and secrets; ``chalice package`` works for every stage and
its templates (merged with infra/resources.yaml) and infra/vpc-egress.yaml pass cfn-lint for the
global and the China regions; a stage without VPC settings is refused.

What each function calls is established twice, and the two must agree: statically, by following
the calls from the function's handlers through app.py and chalicelib (every operation its code
can reach), and by running the function through each of its paths against moto server and the
Zeyi simulator with every boto3 call recorded (which operation, on which table or secret).

Adding a function: its policy file per stage (``.chalice/policy-<stage>-<name>.json``, named in
the stage's ``lambda_functions``) and one entry in ``FUNCTIONS`` below that drives its paths.

No AWS account is needed: ``chalice package`` and ``cfn-lint`` are offline (chalice may download
Lambda-platform wheels from PyPI on a cold cache)."""
from __future__ import annotations

import ast
import builtins
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore import xform_name

from chalicelib.runtime import aws, settings
from ops.config_commands import VPC_STACK_OUTPUTS
from ops.package import PackageError, package
from ops.stage_config import API_HANDLER, REQUIRED_NAMES, Stage, load_stage
from tests import peer
from tests.conftest import simulator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text(encoding="utf-8"))
APP_NAME = CONFIG["app_name"]
DEPLOYED_STAGES = ["dev", "prod"]
LINT_REGIONS = ["us-east-1", "cn-north-1", "cn-northwest-1"]
CFN_LINT = Path(sys.executable).with_name("cfn-lint")

# Services the Lambda code may call, with the IAM prefix of each. A new service fails
# test_functions_call_only_known_services until it is added here, to the recorder's
# _resource_names and to the policy files.
KNOWN_SERVICES = {"dynamodb": "dynamodb", "secretsmanager": "secretsmanager", "events": "events",
                  "s3": "s3", "stepfunctions": "states"}
# S3 calls authorised as another action: HeadObject is s3:GetObject, and a presigned request is
# authorised when it is used, as the action it presigns (a presigned POST is s3:PutObject).
# botocore emits a presigned POST's parameters under the CreateBucket operation model (no code
# path creates a bucket: the scanner would find create_bucket).
# A POST carrying a tagging field also needs s3:PutObjectTagging.
S3_ACTIONS = {"HeadObject": ("GetObject",), "GetObject": ("GetObject",),
              "PutObjectTagging": ("PutObjectTagging",),
              "generate_presigned_post": ("PutObject", "PutObjectTagging"),
              "CreateBucket": ("PutObject", "PutObjectTagging")}
# The attachments bucket's objects each action is granted on (docs/operations.md): uploads land
# under uploads/, reads cover every object a send may name.
S3_SCOPES = {"s3:GetObject": "/*", "s3:PutObject": "/uploads/*",
             "s3:PutObjectTagging": "/uploads/*"}
# Answering a workflow's task token: the token names no resource IAM can check (a callback
# task's token is not an activity's), so these two are allowed on Resource *.
TASK_TOKEN_ACTIONS = {"states:SendTaskSuccess", "states:SendTaskFailure"}
# IAM prefixes that only the Lambda service uses with a function's role, never the code: an
# event source mapping's on-failure destination (the approval events' dead-letter queue).
SERVICE_ONLY_PREFIXES = {"sqs"}
# TransactWriteItems / TransactGetItems have no IAM action of their own: each element is
# authorised as the underlying item action.
TRANSACT_ELEMENTS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                     "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
# What a Lambda function in a VPC needs to manage its network interfaces (the actions of the AWS
# managed policy AWSLambdaVPCAccessExecutionRole). They support no resource-level restriction.
VPC_ENI_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                   "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface",
                   "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"}
LAYER_PREFIX = re.compile(r"^python/(lib/python[^/]+/site-packages/)?")
LOG_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
# What X-Ray's active tracing needs of every function's role (the Lambda service sends the
# function's segment with it, chalicelib.runtime.tracing the subsegments). No resource-level restriction.
XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# Chalice's policy files are static JSON, the same file for every region and partition: the
# account is pinned with this condition (IAM fills in the role's own account), the partition and
# region stay '*' (docs/operations.md, "Least privilege and where Chalice limits it").
ACCOUNT_PIN = {"StringEqualsIfExists": {"aws:ResourceAccount": "${aws:PrincipalAccount}"}}
ZEYI_CLIENT = ("chalicelib.protocol.zeyi_client", "ZeyiClient.__init__")
OPERATOR_ONLY_MODULES = {"chalicelib.runtime.tables"}
STATEFUL_TYPES = {"AWS::DynamoDB::Table", "AWS::SecretsManager::Secret",
                  "AWS::SecretsManager::ResourcePolicy", "AWS::Logs::LogGroup",
                  "AWS::Events::EventBus", "AWS::Events::Archive", "AWS::SQS::Queue"}


# --- what each function's code can call: its static call graph -----------------------------------

def lambda_sources() -> dict[str, Path]:
    """Module name -> file, for every module the Lambda package runs."""
    sources = {"app": ROOT / "app.py"}
    for path in sorted((ROOT / "chalicelib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return sources


@cache
def _operation_names(service: str) -> dict[str, str]:
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


BUILTIN_METHODS = frozenset(name for kind in (dict, list, str, bytes, set, tuple, int, object)
                            for name in dir(kind)) | frozenset(dir(builtins))


@dataclass(frozen=True)
class Function:
    module: str
    qualname: str
    node: ast.AST = field(compare=False)
    cls: str | None = None


@dataclass(frozen=True)
class Reach:
    functions: frozenset[tuple[str, str]]
    services: frozenset[str]
    actions: frozenset[str]


class CallGraph:
    """Which functions of app.py and chalicelib a handler can reach, and the AWS operations they
    can call. Calls are resolved by module, by ``self``, by annotation (a parameter's or a
    callee's return type), and otherwise by a method name that only chalicelib defines: an
    over-approximation, which the recorded calls keep honest."""

    def __init__(self, sources: dict[str, Path]):
        self.functions: dict[tuple[str, str], Function] = {}
        self.bases: dict[tuple[str, str], list[ast.expr]] = {}
        self.imports: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.by_method_name: dict[str, list[tuple[str, str]]] = {}
        for module, path in sources.items():
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            self.imports[module] = self._imports(tree, sources)
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions[(module, node.name)] = Function(module, node.name, node)
                elif isinstance(node, ast.ClassDef):
                    self.bases[(module, node.name)] = node.bases
                    for item in node.body:
                        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            qualname = f"{node.name}.{item.name}"
                            self.functions[(module, qualname)] = Function(module, qualname, item,
                                                                          node.name)
                            self.by_method_name.setdefault(item.name, []).append(
                                (module, qualname))

    @staticmethod
    def _imports(tree: ast.Module, sources) -> dict[str, tuple[str, str | None]]:
        found = {}
        for node in ast.walk(tree):  # function-local imports too (lazy imports)
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    local = alias.asname or alias.name
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in sources:
                        found[local] = (submodule, None)
                    elif node.module in sources:
                        found[local] = (node.module, alias.name)
        return found

    # -- resolution ----------------------------------------------------------------------------

    def _class(self, module: str, name: str) -> tuple[str, str] | None:
        if (module, name) in self.bases:
            return module, name
        target = self.imports.get(module, {}).get(name)
        if target and target[1] and (target[0], target[1]) in self.bases:
            return target[0], target[1]
        return None

    def _method(self, cls: tuple[str, str], name: str) -> list[tuple[str, str]]:
        module, class_name = cls
        if (module, f"{class_name}.{name}") in self.functions:
            return [(module, f"{class_name}.{name}")]
        found = []
        for base in self.bases.get(cls, []):
            if isinstance(base, ast.Name) and (resolved := self._class(module, base.id)):
                found += self._method(resolved, name)
        return found

    def _named(self, module: str, name: str) -> list[tuple[str, str]]:
        """A module-level function, or a class's constructor, by the name ``module`` knows."""
        if (module, name) in self.functions:
            return [(module, name)]
        if cls := self._class(module, name):
            return self._method(cls, "__init__")
        target = self.imports.get(module, {}).get(name)
        if target and target[1]:
            return self._named(target[0], target[1])
        return []

    def _annotated_class(self, module: str, annotation) -> tuple[str, str] | None:
        if isinstance(annotation, ast.Name):
            return self._class(module, annotation.id)
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            return self._class(module, annotation.value)
        return None

    def _resolve(self, fn: Function, func: ast.expr, params: dict) -> list[tuple[str, str]]:
        if isinstance(func, ast.Name):
            return self._named(fn.module, func.id)
        if not isinstance(func, ast.Attribute):
            return []
        name, value = func.attr, func.value
        if isinstance(value, ast.Name):
            if value.id == "self" and fn.cls:
                return self._method((fn.module, fn.cls), name)
            target = self.imports.get(fn.module, {}).get(value.id)
            if target and target[1] is None:
                return self._named(target[0], name)
            if value.id in params and (cls := self._annotated_class(fn.module, params[value.id])):
                return self._method(cls, name)
        if isinstance(value, ast.Call):
            found = []
            for callee in self._resolve(fn, value.func, params):
                returns = getattr(self.functions[callee].node, "returns", None)
                if cls := self._annotated_class(callee[0], returns):
                    found += self._method(cls, name)
            if found:
                return found
        if name in BUILTIN_METHODS:
            return []
        return list(self.by_method_name.get(name, []))

    # -- reach -----------------------------------------------------------------------------------

    def reach(self, entries: list[tuple[str, str]]) -> Reach:
        seen: set[tuple[str, str]] = set()
        todo = list(entries)
        services, names, keys = set(), set(), set()
        while todo:
            key = todo.pop()
            if key in seen or key not in self.functions:
                continue
            seen.add(key)
            fn = self.functions[key]
            nodes = [n for stmt in fn.node.body for n in ast.walk(stmt)]
            params = {arg.arg: arg.annotation for n in [fn.node, *nodes]
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                      for arg in [*n.args.args, *n.args.kwonlyargs] if arg.annotation}
            for node in nodes:
                if isinstance(node, ast.Call):
                    todo += self._resolve(fn, node.func, params)
                    strings = [a.value for a in node.args
                               if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                    if isinstance(node.func, ast.Attribute):
                        names.add(node.func.attr)
                        if node.func.attr in {"client", "resource"} and strings:
                            services.add(strings[0])
                    names.update(strings)
                    # A function passed as an argument (a parser, a callback) may be called.
                    for arg in [*node.args, *(keyword.value for keyword in node.keywords)]:
                        if isinstance(arg, (ast.Name, ast.Attribute)):
                            todo += self._resolve(fn, arg, params)
                elif isinstance(node, ast.Dict):
                    keys.update(k.value for k in node.keys
                                if isinstance(k, ast.Constant) and isinstance(k.value, str))
        actions = set()
        for service in services & KNOWN_SERVICES.keys():
            prefix = KNOWN_SERVICES[service]
            for snake, operation in _operation_names(service).items():
                if snake not in names:
                    continue
                if operation == "TransactWriteItems":
                    actions |= {f"{prefix}:{TRANSACT_ELEMENTS[key]}"
                                for key in keys & TRANSACT_ELEMENTS.keys()}
                elif operation == "TransactGetItems":
                    actions.add(f"{prefix}:GetItem")
                elif service == "s3":
                    actions |= {f"{prefix}:{name}" for name in S3_ACTIONS[operation]}
                else:
                    actions.add(f"{prefix}:{operation}")
        if "s3" in services and "generate_presigned_post" in names:
            actions |= {f"s3:{name}" for name in S3_ACTIONS["generate_presigned_post"]}
        return Reach(frozenset(seen), frozenset(services), frozenset(actions))


@cache
def call_graph() -> CallGraph:
    return CallGraph(lambda_sources())


def _chalice_app():
    import app as gateway_app

    return gateway_app.app


def handler_entries() -> dict[str, list[tuple[str, str]]]:
    """Each Lambda function chalice deploys -> the Python functions it runs."""
    chalice_app = _chalice_app()
    entries: dict[str, list[tuple[str, str]]] = {}
    for route in chalice_app.routes.values():
        for entry in route.values():
            view = entry.view_function
            entries.setdefault(API_HANDLER, []).append((view.__module__, view.__qualname__))
    for function in chalice_app.pure_lambda_functions:
        entries[function.name] = [(function.func.__module__, function.func.__qualname__)]
    import app as gateway_app

    for source in chalice_app.event_sources:
        handler = getattr(gateway_app, source.handler_string.rsplit(".", 1)[-1])
        handler = getattr(handler, "func", handler)
        entries[source.name] = [(handler.__module__, handler.__qualname__)]
    return entries


@cache
def static_reach(function: str) -> Reach:
    return call_graph().reach(handler_entries()[function])


# --- what each function calls when it runs: recorded against moto server --------------------------

@dataclass
class Recorder:
    """Every boto3 call made while active, as (IAM action, the setting naming its resource)."""

    calls: set[tuple[str, str]] = field(default_factory=set)
    active: bool = False

    def __call__(self, params, model, **kwargs):
        if self.active:
            self.calls |= _recorded(model, params)

    @contextlib.contextmanager
    def recording(self):
        import app as gateway_app

        # A fresh container: nothing cached from the setup that ran before.
        gateway_app._secrets = None
        gateway_app._zeyi.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False


def _setting_of(resource_name: str) -> str:
    names = {os.environ[name]: name for name in REQUIRED_NAMES}
    assert resource_name in names, f"a call used {resource_name}, which no setting names"
    return names[resource_name]


def _recorded(model, params) -> set[tuple[str, str]]:
    service = model.service_model.service_name
    assert service in KNOWN_SERVICES, f"the code called {service}: teach the recorder and the policies"
    prefix = KNOWN_SERVICES[service]
    operation = model.name
    if service == "secretsmanager":
        return {(f"{prefix}:{operation}", _setting_of(params["SecretId"]))}
    if service == "s3":
        assert params["Bucket"] == os.environ[settings.ATTACHMENTS_BUCKET], params["Bucket"]
        return {(f"{prefix}:{name}", settings.ATTACHMENTS_BUCKET + S3_SCOPES[f"{prefix}:{name}"])
                for name in S3_ACTIONS[operation]}
    if service == "events":
        return {(f"{prefix}:{operation}", _setting_of(entry.get("EventBusName", "default")))
                for entry in params["Entries"]}
    if service == "stepfunctions":
        return {(f"{prefix}:{operation}", "*")}
    if operation in {"TransactWriteItems", "TransactGetItems"}:
        found = set()
        for item in params["TransactItems"]:
            ((kind, element),) = item.items()
            found.add((f"{prefix}:{TRANSACT_ELEMENTS[kind]}", _setting_of(element["TableName"])))
        return found
    if operation in {"BatchGetItem", "BatchWriteItem"}:
        return {(f"{prefix}:{operation}", _setting_of(table)) for table in params["RequestItems"]}
    if params.get("IndexName"):  # a Query of an index is authorised on the index's ARN
        return {(f"{prefix}:{operation}",
                 f"{_setting_of(params['TableName'])}/index/{params['IndexName']}")}
    return {(f"{prefix}:{operation}", _setting_of(params["TableName"]))}


def _ok(answer: dict) -> dict:
    assert answer["success"] is True, answer
    return answer


def _http(gateway, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    response = getattr(gateway.http, method)(path, body=body, headers=headers or {
        "Content-Type": "application/json"})
    return response.status_code, json.loads(response.body)


def _callback(gateway, token: str, **fields) -> dict:
    body = peer.callback_body(**fields)
    status, answer = _http(gateway, "post", "/dingtalkAudit/callback", body,
                           peer.signed_headers(body, token=token))
    assert status == 200, answer
    return answer["result"]


def exercise_api_handler(gateway, zeyi, record):
    """Every route: a token, callbacks (a code first seen by callback, its redelivery, one that
    ends an approval, a late one), send, status, cancel."""
    with record():
        body = b"{}"
        status, answer = _http(gateway, "post", "/auth/token", body, peer.signed_headers(body))
        assert status == 200, answer
        token = answer["result"]["accessToken"]
        first = dict(code="POL-CB", businessId="proc-1")
        assert _callback(gateway, token, **first)["disposition"] == "applied"
        assert _callback(gateway, token, **first)["disposition"] == "duplicate"
        send = json.dumps(peer.send_body("POL-API")).encode()
        _ok(_http(gateway, "post", "/audit/send", send)[1])
        _ok(_http(gateway, "get", "/audit/POL-API")[1])
        cancel = json.dumps(peer.cancel_body("POL-API")).encode()
        _ok(_http(gateway, "post", "/audit/cancel", cancel)[1])
        # Idempotency keys: a keyed send and its retry (the first answer read back), a keyed
        # cancel.
        keyed = {"Content-Type": "application/json", "Idempotency-Key": "pol-key"}
        send = json.dumps(peer.send_body("POL-KEY")).encode()
        first = _ok(_http(gateway, "post", "/audit/send", send, keyed)[1])
        assert _http(gateway, "post", "/audit/send", send, keyed)[1] == first
        refused = json.dumps({**peer.send_body(".POL"), "taskToken": "t"}).encode()
        assert _http(gateway, "post", "/audit/send", refused)[0] == 400
        cancel = json.dumps(peer.cancel_body("POL-KEY")).encode()
        _ok(_http(gateway, "post", "/audit/cancel", cancel, {**keyed,
                                                             "Idempotency-Key": "pol-c"})[1])
        ended = dict(code="POL-API", businessId="proc-2", type="terminate", result=None)
        assert _callback(gateway, token, **ended)["disposition"] == "applied"
        # A finish after its own instance's terminate was first at Zeyi; then nothing moves.
        finish = dict(code="POL-API", businessId="proc-2", type="finish", result="agree")
        assert _callback(gateway, token, **finish)["disposition"] == "applied"
        late = dict(code="POL-API", businessId="proc-2", type="finish", result="refuse")
        assert _callback(gateway, token, **late)["disposition"] == "ignored"
        # An agree for an earlier attempt's instance, after its terminate: the two mean a
        # revocation, whatever their order, so it settles that attempt and the new send's
        # approval stays as it is.
        revoked = dict(code="POL-OLD", businessId="proc-3", type="terminate", result=None)
        assert _callback(gateway, token, **revoked)["disposition"] == "applied"
        _ok(_http(gateway, "post", "/audit/send",
                  json.dumps(peer.send_body("POL-OLD")).encode())[1])
        agreed = dict(code="POL-OLD", businessId="proc-3", type="finish", result="agree")
        assert _callback(gateway, token, **agreed) == {"status": "PENDING",
                                                       "disposition": "late"}
        # Files: an upload, a send that links it, the approver's click.
        file_id = _uploaded(gateway)
        _ok(_http(gateway, "post", "/audit/send",
                  json.dumps(_with_file("POL-FILE", file_id)).encode())[1])
        link = zeyi.instance("POL-FILE").request["auditFormList"][1]["value"]
        assert gateway.http.get(link[link.index("/files/"):]).status_code == 302


def _uploaded(gateway, name: str = "合同.pdf", data: bytes = b"%PDF-1.4 test") -> str:
    """A fileId whose bytes are in the attachments bucket (the upload itself goes to S3)."""
    import requests

    status, answer = _http(gateway, "post", "/files", json.dumps(
        {"fileName": name, "contentType": "application/pdf", "size": len(data)}).encode())
    assert status == 200, answer
    form = answer["result"]["upload"]
    if UPLOAD_AS is None:
        uploaded = requests.post(form["url"], data=form["fields"],
                                 files={"file": (name, data)}, timeout=10)
        assert uploaded.status_code in (200, 204), uploaded.text[:2000]
    else:  # the app's own upload, as the enforcing moto can take it (tests/test_iam_sufficiency)
        import boto3

        fields = form["fields"]
        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], **UPLOAD_AS).put_object(
            Bucket=form["url"].rstrip("/").rsplit("/", 1)[-1], Key=fields["key"], Body=data,
            ContentType=fields["Content-Type"], Tagging="jinrun-state=unused",
            Metadata={"filename": fields["x-amz-meta-filename"]})
    return answer["result"]["fileId"]


# A presigned POST is authorised by the form's own policy signature, which moto's IAM
# enforcement cannot check (it answers 500): the IAM test puts the bytes with these keys instead.
UPLOAD_AS: dict | None = None


def _with_file(code: str, value: str) -> dict:
    body = peer.send_body(code)
    body["auditFormList"][1] = {"type": "file", "key": "合同", "value": value}
    return body


def exercise_request_file_upload(gateway, zeyi, record):
    with record():
        answer = _ok(gateway.lambda_.invoke("request_file_upload", {
            "fileName": "报价单.pdf", "contentType": "application/pdf", "size": 10}).payload)
        assert answer["result"]["fileId"].startswith("file-")
        refused = gateway.lambda_.invoke("request_file_upload", {"fileName": "x"}).payload
        assert refused["errorCode"] == "VALIDATION_ERROR", refused


def exercise_send_approval(gateway, zeyi, record):
    """A send Zeyi refuses (FAILED), the resend that replaces it, a send refused as active,
    a send with a file, one naming a file that is not there."""
    file_id = _uploaded(gateway)
    zeyi.add_fault("send", "refuse")
    with record():
        refused = gateway.lambda_.invoke("send_approval", peer.send_body("POL-S")).payload
        assert refused["success"] is False and refused["result"]["status"] == "FAILED", refused
        _ok(gateway.lambda_.invoke("send_approval", peer.send_body("POL-S")).payload)
        active = gateway.lambda_.invoke("send_approval", peer.send_body("POL-S")).payload
        assert active["errorCode"] == "APPROVAL_ACTIVE", active
        _ok(gateway.lambda_.invoke("send_approval", _with_file("POL-SF", file_id)).payload)
        missing = gateway.lambda_.invoke("send_approval",
                                         _with_file("POL-SM", "file-" + "0" * 32)).payload
        assert missing["errorCode"] == "VALIDATION_ERROR", missing
        # A workflow's send refused before its claim: its task is failed at once.
        refused = gateway.lambda_.invoke("send_approval", {**peer.send_body(".POL"),
                                                           "taskToken": "token"}).payload
        assert refused["errorCode"] == "VALIDATION_ERROR", refused
        keyed = {**peer.send_body("POL-SK"), "idempotencyKey": "k", "taskToken": "token"}
        first = _ok(gateway.lambda_.invoke("send_approval", keyed).payload)
        again = gateway.lambda_.invoke("send_approval", keyed).payload
        assert again["result"]["attemptId"] == first["result"]["attemptId"], again


def exercise_cancel_approval(gateway, zeyi, record):
    _ok(gateway.lambda_.invoke("send_approval", peer.send_body("POL-C")).payload)
    _ok(gateway.lambda_.invoke("send_approval", peer.send_body("POL-CK")).payload)
    with record():
        _ok(gateway.lambda_.invoke("cancel_approval", peer.cancel_body("POL-C")).payload)
        again = gateway.lambda_.invoke("cancel_approval", peer.cancel_body("POL-C")).payload
        assert again["errorCode"] == "APPROVAL_NOT_CANCELLABLE", again
        keyed = {**peer.cancel_body("POL-CK"), "idempotencyKey": "k"}
        first = _ok(gateway.lambda_.invoke("cancel_approval", keyed).payload)
        again = gateway.lambda_.invoke("cancel_approval", keyed).payload
        assert again["result"]["attemptId"] == first["result"]["attemptId"], again


def exercise_get_approval(gateway, zeyi, record):
    _ok(gateway.lambda_.invoke("send_approval", peer.send_body("POL-G")).payload)
    with record():
        _ok(gateway.lambda_.invoke("get_approval", {"code": "POL-G"}).payload)
        unknown = gateway.lambda_.invoke("get_approval", {"code": "POL-NONE"}).payload
        assert unknown["errorCode"] == "APPROVAL_NOT_FOUND", unknown


def exercise_publish_approval_events(gateway, zeyi, record):
    """The stream records of every kind of change (a send, Zeyi's answer, a callback, a
    callback recorded without a move), handed to the function as Lambda does."""
    from tests.events_support import create_bus, stream_records

    create_bus(os.environ[settings.EVENT_BUS_NAME])
    # A workflow's send: its task token is answered when the approval ends.
    _ok(gateway.lambda_.invoke("send_approval", {**peer.send_body("POL-E"),
                                                 "taskToken": "a-workflows-token"}).payload)
    zeyi.add_fault("send", "refuse")  # FAILED: the workflow's task fails
    refused = gateway.lambda_.invoke("send_approval", {**peer.send_body("POL-EF"),
                                                       "taskToken": "another-token"}).payload
    assert refused["result"]["status"] == "FAILED", refused
    body = b"{}"
    token = json.loads(gateway.http.post("/auth/token", body=body, headers=peer.signed_headers(
        body)).body)["result"]["accessToken"]
    _callback(gateway, token, code="POL-E", businessId="proc-e")
    _callback(gateway, token, code="POL-E", businessId="proc-f", result="refuse")
    records = stream_records(os.environ[settings.APPROVALS_TABLE])
    with record():
        answer = gateway.lambda_.invoke("publish_approval_events", {"Records": records}).payload
        assert answer == {"batchItemFailures": []}, answer


def stream_read_and_dead_letters(stage_name: str) -> dict[str, set[str]]:
    """What Lambda does with the events function's role: read the approvals stream, and send a
    batch that failed for good to the dead-letter queue."""
    table = stage_env(stage_name)[settings.APPROVALS_TABLE]
    bus = stage_env(stage_name)[settings.EVENT_BUS_NAME]
    stream = f"arn:*:dynamodb:*:*:table/{table}/stream/*"
    return {**{f"dynamodb:{action}": {stream} for action in (
        "DescribeStream", "GetRecords", "GetShardIterator", "ListStreams")},
        "sqs:SendMessage": {f"arn:*:sqs:*:*:{bus}-dlq"}}


def exercise_find_stuck_approvals(gateway, zeyi, record):
    """The scheduled search, with one approval of each searched status stuck for an hour."""
    import time

    from chalicelib.approvals.store import DynamoDBApprovalStore

    store = DynamoDBApprovalStore(aws.client("dynamodb"), os.environ[settings.APPROVALS_TABLE],
                                  os.environ[settings.NONCES_TABLE],
                                  clock=lambda: time.time() - 8 * 24 * 3600)
    from tests.events_support import create_bus

    create_bus(os.environ[settings.EVENT_BUS_NAME])  # each stuck approval is announced there
    store.claim("POL-STUCK-S", {"code": "POL-STUCK-S"}, 120)
    attempt = store.claim("POL-STUCK-P", {"code": "POL-STUCK-P"}, 120)
    store.settle_send("POL-STUCK-P", attempt, "PENDING", {"kind": "accepted"})
    event = gateway.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
    with record():
        gateway.lambda_.invoke("find_stuck_approvals", event)
    assert len(store.open_approvals("SUBMITTING")) == 1


@dataclass(frozen=True)
class Entry:
    """How to drive a function's paths, and what the Lambda service does with the function's
    role that no code path shows (a DynamoDB stream handler's role, say, needs
    dynamodb:GetRecords, GetShardIterator, DescribeStream and ListStreams on the stream):
    stage -> {action: resources}."""

    exercise: Callable
    service_actions: Callable[[str], dict[str, set[str]]] = lambda stage: {}


# One entry per deployed Lambda function.
FUNCTIONS: dict[str, Entry] = {
    API_HANDLER: Entry(exercise_api_handler),
    "send_approval": Entry(exercise_send_approval),
    "request_file_upload": Entry(exercise_request_file_upload),
    "cancel_approval": Entry(exercise_cancel_approval),
    "get_approval": Entry(exercise_get_approval),
    "publish_approval_events": Entry(exercise_publish_approval_events,
                                     service_actions=stream_read_and_dead_letters),
    "find_stuck_approvals": Entry(exercise_find_stuck_approvals),
}


@pytest.fixture
def record_calls(gateway, monkeypatch):
    monkeypatch.setenv(settings.ATTACHMENTS_BUCKET, "test-attachments")
    monkeypatch.setenv(settings.PUBLIC_BASE_URL, "https://approvals.example/api")
    region = aws.client("s3").meta.region_name  # cn-north-1 here: a bucket says where it lives
    aws.client("s3").create_bucket(Bucket="test-attachments", CreateBucketConfiguration={
        "LocationConstraint": region})
    with simulator() as zeyi:
        monkeypatch.setenv("ZEYI_BASE_URL", zeyi.url)
        recorder = Recorder()
        for service in KNOWN_SERVICES:
            aws.client(service).meta.events.register("provide-client-params", recorder)

        def run(function: str) -> set[tuple[str, str]]:
            FUNCTIONS[function].exercise(gateway, zeyi, recorder.recording)
            return recorder.calls
        yield run


# --- the policies ---------------------------------------------------------------------------------

def stage_of(name: str) -> Stage:
    return load_stage(name, ROOT / ".chalice" / "config.json")


def stage_env(name: str) -> dict[str, str]:
    return stage_of(name).environment


def resource_arn(stage_name: str, setting: str) -> str:
    if setting == "*":
        return "*"
    setting, _, index = setting.partition("/index/")
    if setting.startswith(settings.ATTACHMENTS_BUCKET):
        bucket, scope = setting.split("/", 1)
        return f"arn:*:s3:::{stage_env(stage_name)[bucket]}/{scope}"
    value = stage_env(stage_name)[setting]
    if index:
        return f"arn:*:dynamodb:*:*:table/{value}/index/{index}"
    if setting in (settings.APPROVALS_TABLE, settings.NONCES_TABLE):
        return f"arn:*:dynamodb:*:*:table/{value}"
    if setting == settings.EVENT_BUS_NAME:
        return f"arn:*:events:*:*:event-bus/{value}"
    return f"arn:*:secretsmanager:*:*:secret:{value}-??????"


def policy_file(stage_name: str, function: str) -> str:
    return stage_of(stage_name).settings["lambda_functions"][function]["iam_policy_file"]


def load_policy(name: str) -> dict:
    return json.loads((ROOT / ".chalice" / name).read_text(encoding="utf-8"))


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed(policy: dict) -> dict[str, set[str]]:
    """Action -> the resources the policy allows it on."""
    found: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        for action in _as_list(statement["Action"]):
            found.setdefault(action, set()).update(_as_list(statement["Resource"]))
    return found


def kept_out_of_vpc(stage_name: str, function: str) -> bool:
    """True when the stage's entry for the function overrides the VPC settings with nothing."""
    entry = stage_of(stage_name).settings.get("lambda_functions", {}).get(function, {})
    return entry.get("subnet_ids") == [] and entry.get("security_group_ids") == []


def test_every_deployed_function_has_an_entry_here():
    assert set(handler_entries()) == set(FUNCTIONS), (
        "each Lambda function needs one entry in FUNCTIONS that drives its paths")


@pytest.mark.parametrize("stage_name", DEPLOYED_STAGES)
def test_every_function_has_its_own_policy_file(stage_name):
    cfg = stage_of(stage_name).settings
    assert cfg.get("autogen_policy", CONFIG.get("autogen_policy", True)) is False
    assert cfg.get("manage_iam_role", CONFIG.get("manage_iam_role", True)) is True
    # No fallback policy: a function without its own file makes `chalice package` fail.
    assert "iam_policy_file" not in cfg and "iam_policy_file" not in CONFIG
    assert not (ROOT / ".chalice" / f"policy-{stage_name}.json").exists()
    for function in handler_entries():
        name = policy_file(stage_name, function)
        assert name == f"policy-{stage_name}-{function}.json"
        assert (ROOT / ".chalice" / name).is_file()


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_functions_call_only_known_services(function):
    reach = static_reach(function)
    assert reach.services, f"found no boto3 client in {function}'s code: the scanner is broken"
    assert reach.services <= KNOWN_SERVICES.keys(), (
        f"{function} creates clients for {sorted(reach.services - KNOWN_SERVICES.keys())}")
    assert not {module for module, _ in reach.functions} & OPERATOR_ONLY_MODULES, (
        f"{function} reaches operator tooling: its AWS calls would need the function role")


def test_the_scanner_tells_the_functions_apart():
    # A guard on the scanner itself: what docs/architecture.md says each function does.
    assert static_reach("get_approval").actions == {"dynamodb:Query"}
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
            "secretsmanager:GetSecretValue"} <= static_reach(API_HANDLER).actions
    assert ZEYI_CLIENT in static_reach("send_approval").functions
    assert ZEYI_CLIENT not in static_reach("get_approval").functions


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_role_allows_exactly_what_its_function_calls(function, record_calls):
    recorded = record_calls(function)
    recorded_actions = {action for action, _ in recorded}
    static_actions = set(static_reach(function).actions)
    assert recorded_actions <= static_actions, (
        f"{function} called {sorted(recorded_actions - static_actions)}, which the scanner did "
        "not find: the scanner is broken")
    assert static_actions <= recorded_actions, (
        f"{function}'s code can call {sorted(static_actions - recorded_actions)}, which its entry "
        "in FUNCTIONS never exercised: drive that path too")
    for stage_name in DEPLOYED_STAGES:
        expected = FUNCTIONS[function].service_actions(stage_name)
        for action, setting in recorded:
            expected.setdefault(action, set()).add(resource_arn(stage_name, setting))
        name = policy_file(stage_name, function)
        granted = {action: resources for action, resources in allowed(load_policy(name)).items()
                   if action.split(":")[0] in {*KNOWN_SERVICES.values(), *SERVICE_ONLY_PREFIXES}}
        assert granted == expected, f"{name}: allows {granted}, the code calls {expected}"


@pytest.mark.parametrize("stage_name", DEPLOYED_STAGES)
@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_policy_is_least_privilege_in_form(stage_name, function):
    name = policy_file(stage_name, function)
    policy = load_policy(name)
    assert policy["Version"] == "2012-10-17"  # needed for the ${aws:PrincipalAccount} variable
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert not {"NotAction", "NotResource", "NotPrincipal"} & statement.keys()
        actions = set(_as_list(statement["Action"]))
        resources = set(_as_list(statement["Resource"]))
        for action in actions:
            assert "*" not in action and "?" not in action, f"{name}: wildcard {action}"
        prefixes = {action.split(":")[0] for action in actions}
        assert len(prefixes) == 1, f"{name}: one service per statement, got {prefixes}"
        prefix = prefixes.pop()
        if resources == {"*"}:
            assert prefix in {"ec2", "xray", "states"}, (
                f"{name}: Resource * is only for the VPC ENI, X-Ray and task-token actions")
            assert actions <= VPC_ENI_ACTIONS | XRAY_ACTIONS | TASK_TOKEN_ACTIONS, (
                f"{name}: {actions - VPC_ENI_ACTIONS - XRAY_ACTIONS - TASK_TOKEN_ACTIONS}")
            continue
        for resource in resources:
            if prefix == "s3":  # S3 ARNs name no region and no account
                bucket = stage_env(stage_name)[settings.ATTACHMENTS_BUCKET]
                assert resource.startswith(f"arn:*:s3:::{bucket}/"), (
                    f"{name}: {resource} is not an object of the stage's attachments bucket")
                continue
            assert resource.startswith(f"arn:*:{prefix}:*:*:"), (
                f"{name}: {resource} must name no partition or region (the file serves aws and "
                "aws-cn in any region); the account is pinned by the condition")
        assert statement.get("Condition") == ACCOUNT_PIN, f"{name}: not pinned to the account"
        if prefix == "logs":
            assert actions == LOG_ACTIONS
            group = f"arn:*:logs:*:*:log-group:{stage_of(stage_name).log_group(function)}"
            assert resources == {group, f"{group}:*"}, f"{name}: writes other functions' logs"
        else:
            assert prefix in {*KNOWN_SERVICES.values(), *SERVICE_ONLY_PREFIXES}, (
                f"{name}: unexpected service {prefix}")
    granted = allowed(policy)
    assert granted.keys() >= LOG_ACTIONS, f"{name}: the function could not write its logs"
    traced = stage_of(stage_name).function_setting(function, "xray")
    assert (granted.keys() & XRAY_ACTIONS) == (XRAY_ACTIONS if traced else set()), (
        f"{name}: X-Ray is {'on' if traced else 'off'} for {function}")
    eni = granted.keys() & VPC_ENI_ACTIONS
    if kept_out_of_vpc(stage_name, function):
        assert not eni, f"{name}: {function} runs outside the VPC and needs no ENI actions"
    else:
        assert eni == VPC_ENI_ACTIONS, f"{name}: {function} runs in the VPC: it needs the ENI actions"


@pytest.mark.parametrize("stage_name", DEPLOYED_STAGES)
@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_that_calls_zeyi_runs_in_the_vpc(stage_name, function):
    calls_zeyi = ZEYI_CLIENT in static_reach(function).functions
    if calls_zeyi:
        assert not kept_out_of_vpc(stage_name, function), (
            f"{function} calls Zeyi: kept out of the VPC, it would leave from an IP off Zeyi's "
            "whitelist")


# --- chalice package + cfn-lint ------------------------------------------------------------------

def cfn_lint(*templates: Path) -> None:
    completed = subprocess.run(
        [str(CFN_LINT), "--regions", *LINT_REGIONS, "--", *map(str, templates)],
        capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def _functions(template: dict) -> dict[str, dict]:
    return {name: resource for name, resource in template["Resources"].items()
            if resource["Type"] in {"AWS::Serverless::Function", "AWS::Lambda::Function"}}


@pytest.fixture(autouse=True)
def _region_for_chalice(monkeypatch):
    # chalice package needs a region; the template it writes is region-independent.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_chalice_package_builds_every_stage(stage, tmp_path):
    # The committed config names no stream (the bootstrap writes it per account).
    result = package(stage, tmp_path / "out", require_vpc=False, require_stream=False)
    template = json.loads(result.template.read_text(encoding="utf-8"))
    functions = _functions(template)
    assert {"APIHandler", "SendApproval", "CancelApproval", "GetApproval"} <= functions.keys()
    env = stage_env(stage)
    from chalice.utils import to_cfn_resource_name

    # chalice names each function's resource after it, the API handler's "APIHandler".
    chalice_names = {to_cfn_resource_name(fn): fn for fn in FUNCTIONS if fn != API_HANDLER}
    chalice_names["APIHandler"] = API_HANDLER
    assert chalice_names.keys() == functions.keys()
    for name, function in functions.items():
        properties = function["Properties"]
        assert re.fullmatch(r"python3\.\d+", properties["Runtime"])
        assert properties["MemorySize"] == CONFIG["lambda_memory_size"]
        # Above Zeyi's connect + read timeouts, under API Gateway's 29 s integration limit.
        connect = float(env[settings.ZEYI_CONNECT_TIMEOUT_SECONDS])
        read = float(env[settings.ZEYI_READ_TIMEOUT_SECONDS])
        assert connect + read + 5 <= properties["Timeout"] < 29, name
        assert properties["Environment"]["Variables"] == env
        assert properties["Tracing"] == "Active", f"{name}: X-Ray is not active"
        reserved = stage_of(stage).function_setting(chalice_names[name], "reserved_concurrency")
        assert isinstance(reserved, int) and reserved >= 1, f"{name}: no reserved concurrency"
        assert properties["ReservedConcurrentExecutions"] == reserved, name
        role = template["Resources"][properties["Role"]["Fn::GetAtt"][0]]
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        own = load_policy(policy_file(stage, chalice_names[name]))
        assert documents == [own], f"{name} runs with another function's policy"
    roles = {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()}
    assert len(roles) == len(functions), "every function has a role of its own"
    # boto3/botocore come from the Lambda runtime: never bundled, in the function zip or a layer.
    for zip_name in result.zips:
        with zipfile.ZipFile(result.out_dir / zip_name) as archive:
            tops = {LAYER_PREFIX.sub("", entry).split("/")[0] for entry in archive.namelist()}
        assert "requests" in tops or zip_name == "deployment.zip", zip_name
        assert not {"boto3", "botocore"} & tops, zip_name
    with zipfile.ZipFile(result.out_dir / "deployment.zip") as archive:
        assert {"chalicelib", "app.py"} <= {e.split("/")[0] for e in archive.namelist()}


@pytest.mark.process
@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_merged_template_passes_cfn_lint(stage, tmp_path):
    result = package(stage, tmp_path / "out", merge_template=ROOT / "infra" / "resources.yaml",
                     require_vpc=False)
    assert result.template.suffix == ".yaml"
    cfn_lint(result.template)
    # The stack takes no other Stage than the packaged one: a prod package deployed with
    # Stage=dev would carry prod's settings under dev's names.
    parameter = load_cfn(result.template)["Parameters"]["Stage"]
    assert (parameter["AllowedValues"], parameter["Default"]) == ([stage], stage)
    # The approval events' stream subscription: this stack's stream, and the failure handling
    # chalice cannot write, merged into chalice's own (tests/test_events_deploy.py).
    from chalicelib.approvals.events import STREAM_MAPPING

    function = load_cfn(result.template)["Resources"]["PublishApprovalEvents"]["Properties"]
    [(_, subscription)] = function["Events"].items()
    assert subscription["Type"] == "DynamoDB"
    merged = subscription["Properties"]
    assert merged["Stream"] == {"Fn::GetAtt": ["ApprovalsTable", "StreamArn"]}
    assert {name: merged[name] for name in STREAM_MAPPING} == STREAM_MAPPING
    assert merged["StartingPosition"] == "TRIM_HORIZON"


def _resolve_stage(value, stage: str) -> str:
    template = value["Fn::Sub"] if isinstance(value, dict) else value
    return template.replace("${Stage}", stage)


class _CfnLoader(yaml.SafeLoader):
    pass


_CfnLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: {f"Fn::{suffix}": loader.construct_scalar(node)}
    if isinstance(node, yaml.ScalarNode) else {f"Fn::{suffix}": loader.construct_sequence(node)})


def load_cfn(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_resources_template_names_match_the_stage_config(stage):
    resources = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]
    env = stage_env(stage)
    names = {_resolve_stage(r["Properties"]["TableName"], stage) for r in resources.values()
             if r.get("Type") == "AWS::DynamoDB::Table"}
    assert names == {env[settings.APPROVALS_TABLE], env[settings.NONCES_TABLE]}
    secrets = {_resolve_stage(r["Properties"]["Name"], stage) for r in resources.values()
               if r.get("Type") == "AWS::SecretsManager::Secret"}
    assert secrets == {env[settings.OUTBOUND_SECRET_ID], env[settings.INBOUND_SECRET_ID],
                       env[settings.TOKEN_SECRET_ID]}
    # What holds data is kept when the stack goes (resources merged into chalice's own, with no
    # Type here, and alarms, topics and dashboards are not data).
    for resource in resources.values():
        if resource.get("Type") in STATEFUL_TYPES:
            assert resource.get("DeletionPolicy") == "Retain"


def test_resources_template_matches_chalicelib_tables():
    from chalicelib.runtime.tables import (
        NONCE_TTL_ATTRIBUTE,
        approvals_table_definition,
        nonces_table_definition,
    )
    resources = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]
    for logical, definition in (("ApprovalsTable", approvals_table_definition("x")),
                                ("NoncesTable", nonces_table_definition("x"))):
        properties = resources[logical]["Properties"]
        assert properties["KeySchema"] == definition["KeySchema"]
        assert properties["AttributeDefinitions"] == definition["AttributeDefinitions"]
        assert properties["BillingMode"] == definition["BillingMode"]
        assert properties.get("GlobalSecondaryIndexes", []) == definition.get(
            "GlobalSecondaryIndexes", [])
        assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        assert properties["SSESpecification"]["SSEEnabled"]
        assert properties["DeletionProtectionEnabled"] is definition["DeletionProtectionEnabled"]
        wanted_stream = definition.get("StreamSpecification")
        stream = properties.get("StreamSpecification")
        assert (stream and stream["StreamViewType"]) == (
            wanted_stream and wanted_stream["StreamViewType"]), logical
        assert {tag["Key"] for tag in properties["Tags"]} == {"app", "stage"}
    ttl = resources["NoncesTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": NONCE_TTL_ATTRIBUTE, "Enabled": True}


def test_resources_template_denies_deleting_every_secret():
    from ops.bootstrap import DENY_DELETION

    resources = load_cfn(ROOT / "infra" / "resources.yaml")["Resources"]
    secrets = {name for name, r in resources.items()
               if r.get("Type") == "AWS::SecretsManager::Secret"}
    protected = {r["Properties"]["SecretId"]["Fn::Ref"] for r in resources.values()
                 if r.get("Type") == "AWS::SecretsManager::ResourcePolicy"
                 and DENY_DELETION in r["Properties"]["ResourcePolicy"]["Statement"]}
    assert protected == secrets


@pytest.mark.process
def test_vpc_egress_template_passes_cfn_lint():
    cfn_lint(ROOT / "infra" / "vpc-egress.yaml")
    template = load_cfn(ROOT / "infra" / "vpc-egress.yaml")
    # What `python -m ops config fill-vpc` reads from the stack.
    assert set(VPC_STACK_OUTPUTS) <= template["Outputs"].keys()
    # An existing Elastic IP can be passed in, so the whitelisted address outlives the stack.
    for suffix in ("A", "B"):
        assert template["Parameters"][f"EgressIpAllocationId{suffix}"]["Default"] == ""
        nat = template["Resources"][f"NatGateway{suffix}"]["Properties"]["AllocationId"]
        assert {"Fn::Ref": f"EgressIpAllocationId{suffix}"} in nat["Fn::If"]
        assert template["Resources"][f"EgressIp{suffix}"]["DeletionPolicy"] == "Retain"


@pytest.mark.process
def test_vpc_and_resource_policy_configuration_packages(tmp_path):
    """What docs/operations.md tells the operator to add once the VPC stack exists: subnets and
    security group for the stage, and optionally the API resource policy. Built on a copy."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib")
    shutil.copy(ROOT / "app.py", project / "app.py")
    shutil.copy(ROOT / "requirements.txt", project / "requirements.txt")
    shutil.copytree(ROOT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployments", "venv"))
    if (ROOT / ".chalice" / "deployments").exists():  # reuse the built dependencies
        shutil.copytree(ROOT / ".chalice" / "deployments", project / ".chalice" / "deployments")
    shutil.copy(ROOT / "infra" / "apigw-resource-policy.json",
                project / ".chalice" / "apigw-policy-dev.json")
    config = json.loads((project / ".chalice" / "config.json").read_text(encoding="utf-8"))
    config["stages"]["dev"].update({
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
        "security_group_ids": ["sg-0123456789abcdef0"],
        "api_gateway_policy_file": "apigw-policy-dev.json",
    })
    (project / ".chalice" / "config.json").write_text(json.dumps(config), encoding="utf-8")

    result = package("dev", tmp_path / "out", project_dir=project,
                     merge_template=ROOT / "infra" / "resources.yaml")
    cfn_lint(result.template)
    template = load_cfn(result.template)
    functions = _functions(template)
    in_vpc = {name for name, function in functions.items()
              if function["Properties"].get("VpcConfig")}
    # Everything that calls Zeyi leaves through the NAT; the read-only status function does not.
    assert in_vpc == {"APIHandler", "SendApproval", "CancelApproval"}
    api = next(r for r in template["Resources"].values()
               if r["Type"] == "AWS::Serverless::Api")
    policy = json.dumps(api["Properties"]["DefinitionBody"].get("x-amazon-apigateway-policy"))
    assert "dingtalkAudit/callback" in policy and "auth/token" in policy


def test_package_fails_loudly_when_dependencies_cannot_be_installed(tmp_path, monkeypatch):
    import ops.package as ops_package

    class Completed:
        returncode = 0
        stdout = "Creating deployment package.\n"
        stderr = ("Could not install dependencies:\nsomething==1.0\nYou will have to build these "
                  "yourself and vendor them in the chalice vendor folder.\n")

    monkeypatch.setattr(ops_package.subprocess, "run", lambda *a, **k: Completed())
    with pytest.raises(PackageError, match="could not install"):
        package("dev", tmp_path, require_vpc=False, require_stream=False)


@pytest.mark.process
def test_package_fails_over_the_size_budget(tmp_path):
    with pytest.raises(PackageError, match="over the budget"):
        package("dev", tmp_path / "out", budget_bytes=1024, require_vpc=False,
                require_stream=False)


def _clean_make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}


@pytest.mark.process
def test_make_package_refuses_a_stage_without_vpc_settings(tmp_path):
    # The committed config has empty VPC settings until `ops config fill-vpc` fills them.
    completed = subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "package",
         "STAGE=prod"], cwd=ROOT, env=_clean_make_env(), capture_output=True, text=True,
        timeout=120, check=False)
    assert completed.returncode != 0
    assert "error: stage prod has no VPC settings" in completed.stderr
    assert "python -m ops config fill-vpc --stage prod" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Creating deployment package" not in completed.stdout + completed.stderr


STREAM = "arn:aws:dynamodb:cn-north-1:111122223333:table/jinrun-approvals-dev/stream/2026-01-01T00:00:00.000"


def _project_copy(tmp_path, stage: str, **settings) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployments", "venv", "deployed"))
    config = json.loads((project / ".chalice" / "config.json").read_text(encoding="utf-8"))
    config["stages"][stage].update(settings)
    (project / ".chalice" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return project


def test_a_package_without_the_approvals_stream_is_refused(tmp_path):
    """Without the stream's ARN the events function would be subscribed to a stand-in that
    does not exist (table/unset/stream/unset): refused before chalice runs, with the fix."""
    project = _project_copy(tmp_path, "prod", subnet_ids=["subnet-0123456789abcdef0"],
                            security_group_ids=["sg-0123456789abcdef0"])
    with pytest.raises(PackageError) as refused:
        package("prod", tmp_path / "out", project_dir=project)
    assert "stage prod names no APPROVALS_STREAM_ARN" in str(refused.value)
    assert "python -m ops.bootstrap --stage prod" in str(refused.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.process
def test_the_local_stage_is_never_packaged(tmp_path):
    """chalice itself fails on it with a KeyError traceback."""
    completed = subprocess.run([sys.executable, "-m", "ops.package", "--stage", "local", "--out",
                                str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, check=False)
    assert completed.returncode == 1
    assert completed.stderr == ("error: stage local runs only in the sandbox (`make run`): it is "
                                "never packaged or deployed; package dev or prod\n")


def test_package_passes_the_guard_once_the_stage_opts_out(tmp_path, monkeypatch):
    """An account that needs no whitelist says so per stage, and then packages."""
    import ops.package as ops_package

    project = tmp_path / "project"
    shutil.copytree(ROOT / ".chalice", project / ".chalice",
                    ignore=shutil.ignore_patterns("deployments", "venv"))
    config = json.loads((project / ".chalice" / "config.json").read_text(encoding="utf-8"))
    config["stages"]["dev"].pop("subnet_ids")
    config["stages"]["dev"].pop("security_group_ids")
    config["stages"]["dev"]["vpc_opt_out"] = "Zeyi test accepts any IP for this account"
    config["stages"]["dev"]["environment_variables"]["APPROVALS_STREAM_ARN"] = STREAM
    (project / ".chalice" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    ran = []

    class Completed:
        returncode, stdout, stderr = 1, "", "chalice stopped here"

    monkeypatch.setattr(ops_package.subprocess, "run", lambda *a, **k: ran.append(a) or Completed())
    with pytest.raises(PackageError, match="chalice stopped here"):
        package("dev", tmp_path / "out", project_dir=project)
    assert ran, "the guard let the opted-out stage through to chalice"
    with pytest.raises(PackageError, match="stage prod has no VPC settings"):
        package("prod", tmp_path / "out", project_dir=project)


def test_docs_and_template_pass_the_same_capabilities():
    pattern = re.compile(r"--capabilities((?:\s+(?:\\\s*\n\s*#?\s*)?CAPABILITY_\w+)+)")
    found = {}
    for path in (ROOT / "docs" / "operations.md", ROOT / "infra" / "resources.yaml"):
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(path.name, []).append(set(re.findall(r"CAPABILITY_\w+", match[1])))
    assert set(found) == {"operations.md", "resources.yaml"}, found
    expected = {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    assert all(caps == expected for uses in found.values() for caps in uses), found
