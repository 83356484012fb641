"""A stage as ``.chalice/config.json`` describes it, and the deploy guard on its VPC settings.

Every deployed stage's calls to Zeyi must leave through the egress VPC (Zeyi accepts only
whitelisted IPs), so a deployed stage needs ``subnet_ids`` and ``security_group_ids``, or an
explicit ``"vpc_opt_out": "<why>"`` for an account that does not need the whitelist. Nothing
else fails when they are forgotten, which is why ``make package`` and ``python -m ops deploy``
refuse such a stage.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from chalicelib.runtime import settings
from ops.common import OpsError

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_PATH = PROJECT_DIR / ".chalice" / "config.json"
LOCAL_STAGES = frozenset({"local"})  # chalice local only: never deployed
VPC_OPT_OUT = "vpc_opt_out"
# The Zeyi environment each deployed stage must call (docs/operations.md, "Zeyi test and
# production").
ZEYI_BASE_URLS = {"dev": "https://test.shjiuze.cn", "prod": "https://gw.shjiuze.cn"}
API_HANDLER = "api_handler"
REQUIRED_NAMES = (settings.APPROVALS_TABLE, settings.NONCES_TABLE, settings.OUTBOUND_SECRET_ID,
                  settings.INBOUND_SECRET_ID, settings.TOKEN_SECRET_ID, settings.EVENT_BUS_NAME)
_SUBNET_RE = re.compile(r"subnet-[0-9a-f]{8,17}")
_SECURITY_GROUP_RE = re.compile(r"sg-[0-9a-f]{8,17}")


def egress_stack_name(stage: str) -> str:
    return f"jinrun-gateway-egress-{stage}"


@dataclass(frozen=True)
class Stage:
    name: str
    config: dict  # the whole config.json
    path: Path

    @property
    def settings(self) -> dict:
        return self.config["stages"][self.name]

    @property
    def app_name(self) -> str:
        return self.config["app_name"]

    @property
    def environment(self) -> dict[str, str]:
        """The environment variables the stage's functions get (top level, then the stage)."""
        return {**self.config.get("environment_variables", {}),
                **self.settings.get("environment_variables", {})}

    def setting(self, name: str) -> str:
        return self.environment.get(name, "")

    def seconds(self, name: str, default: int) -> int:
        raw = self.setting(name).strip()
        try:
            return int(raw) if raw else default
        except ValueError:
            raise OpsError(f"stage {self.name}: {name} must be a whole number of seconds, got "
                           f"{raw!r} in {self.path}") from None

    def flag(self, name: str) -> bool:
        return self.setting(name).strip().lower() in {"1", "true", "yes", "on"}

    @property
    def tags(self) -> dict[str, str]:
        return {"app": self.app_name, "stage": self.name, **self.config.get("tags", {}),
                **self.settings.get("tags", {})}

    def function_name(self, function: str) -> str:
        """The deployed Lambda function's name (chalice names the API handler <app>-<stage>)."""
        if function == API_HANDLER:
            return f"{self.app_name}-{self.name}"
        return f"{self.app_name}-{self.name}-{function}"

    def log_group(self, function: str) -> str:
        return f"/aws/lambda/{self.function_name(function)}"

    def function_setting(self, function: str, name: str):
        """A per-function setting as chalice looks it up: the stage's function entry, the stage,
        the top level's function entry, the top level."""
        for scope in (self.settings.get("lambda_functions", {}).get(function, {}), self.settings,
                      self.config.get("lambda_functions", {}).get(function, {}), self.config):
            if isinstance(scope, dict) and scope.get(name) is not None:
                return scope[name]
        return None


def load_stage(stage: str, path: Path = CONFIG_PATH) -> Stage:
    """The stage from config.json. Raises OpsError when the file or the stage is unusable."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise OpsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise OpsError(f"{path} is not valid JSON: {exc}") from None
    stages = config.get("stages", {})
    if stage not in stages:
        raise OpsError(f"stage {stage!r} is not in {path} (have: {', '.join(stages)})")
    loaded = Stage(stage, config, Path(path))
    for name in REQUIRED_NAMES:
        if not loaded.setting(name):
            raise OpsError(f"stage {stage!r}: {name} is not set in {path}")
    return loaded


def vpc_problems(stage: Stage) -> list[str]:
    """Why the stage must not be deployed as configured: empty or malformed VPC settings without
    an explicit opt-out. Empty for a local stage."""
    if stage.name in LOCAL_STAGES:
        return []
    cfg = stage.settings
    subnets = cfg.get("subnet_ids") or []
    groups = cfg.get("security_group_ids") or []
    opt_out = cfg.get(VPC_OPT_OUT)
    where = f"stages.{stage.name} in {stage.path}"
    if opt_out is not None:
        if not isinstance(opt_out, str) or not opt_out.strip():
            return [f"{VPC_OPT_OUT} must say why the stage needs no fixed egress IP ({where})"]
        if subnets or groups:
            return [f"{VPC_OPT_OUT} is set but so are subnet_ids/security_group_ids: keep one "
                    f"({where})"]
        return []
    if not subnets or not groups:
        return [f"stage {stage.name} has no VPC settings (subnet_ids, security_group_ids in "
                f"{where}): its calls to Zeyi would leave from IPs that are not on Zeyi's "
                f"whitelist. Fill them with `python -m ops config fill-vpc --stage {stage.name}`"
                f", or opt out with \"{VPC_OPT_OUT}\": \"<why>\" in the stage"]
    problems = [f"subnet id {value!r} in {where} is not a subnet id" for value in subnets
                if not isinstance(value, str) or not _SUBNET_RE.fullmatch(value)]
    problems += [f"security group id {value!r} in {where} is not a security group id"
                 for value in groups
                 if not isinstance(value, str) or not _SECURITY_GROUP_RE.fullmatch(value)]
    return problems


def require_vpc(stage: Stage) -> None:
    """The deploy guard. Raises OpsError listing why the stage must not be deployed."""
    problems = vpc_problems(stage)
    if problems:
        raise OpsError("; ".join(problems))


def write_vpc_settings(stage: Stage, subnet_ids: list[str], security_group_ids: list[str]) -> bool:
    """Put the VPC settings into the stage in config.json (dropping an opt-out); True when the
    file changed."""
    config = json.loads(stage.path.read_text(encoding="utf-8"))
    cfg = config["stages"][stage.name]
    before = json.dumps(cfg, sort_keys=True)
    cfg.pop(VPC_OPT_OUT, None)
    cfg["subnet_ids"] = list(subnet_ids)
    cfg["security_group_ids"] = list(security_group_ids)
    if json.dumps(cfg, sort_keys=True) == before:
        return False
    stage.path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
    return True


def app_functions() -> list[str]:
    """The Lambda functions chalice deploys for app.py: the API handler when there is any route,
    then every @app.lambda_function and event handler, by their chalice names."""
    import sys

    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    import app as gateway_app

    chalice_app = gateway_app.app
    names = [API_HANDLER] if chalice_app.routes else []
    names += [function.name for function in chalice_app.pure_lambda_functions]
    names += [source.name for source in chalice_app.event_sources]
    return names
