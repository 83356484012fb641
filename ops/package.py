"""Build the deployment artefacts of a stage with ``chalice package`` and check them.

    python -m ops.package --stage dev [--out build/dev] [--merge-template infra/resources.yaml]

Refuses (exit 1) a deployed stage whose VPC settings are empty, unless the stage opts out
explicitly (ops/stage_config.py): its calls to Zeyi would leave from IPs off Zeyi's whitelist.
Fails (exit 1) when chalice could not install a dependency for the Lambda platform (chalice only
warns about it and builds a package that breaks at import time), or when the function zip plus any
layer zip exceeds the size budget (10 MB zipped: small packages deploy and cold-start faster, and
boto3 is not bundled because the Lambda runtime provides it). Needs no AWS credentials.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ops.common import chalice_build_lock

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_BYTES = 10 * 1024 * 1024
INSTALL_FAILURE = "Could not install dependencies"


class PackageError(Exception):
    pass


@dataclass(frozen=True)
class PackageResult:
    out_dir: Path
    output: str
    zips: dict[str, int]  # file name -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.zips.values())

    @property
    def template(self) -> Path:
        for name in ("sam.json", "sam.yaml"):
            if (self.out_dir / name).exists():
                return self.out_dir / name
        raise PackageError(f"no sam.json or sam.yaml in {self.out_dir}")


def chalice_command() -> list[str]:
    local = Path(sys.executable).with_name("chalice")
    return [str(local)] if local.exists() else ["chalice"]


def _stage_guards(stage: str, project_dir: Path, *, require_vpc: bool,
                  require_stream: bool) -> None:
    """Refuse what would build and then fail, or do harm, once deployed."""
    from chalicelib.runtime import settings
    from ops.common import OpsError
    from ops.stage_config import LOCAL_STAGES, load_stage
    from ops.stage_config import require_vpc as vpc_guard

    if stage in LOCAL_STAGES:  # chalice itself would fail with a KeyError traceback
        raise PackageError(f"stage {stage} runs only in the sandbox (`make run`): it is never "
                           "packaged or deployed; package dev or prod")
    try:
        loaded = load_stage(stage, project_dir / ".chalice" / "config.json")
        if require_vpc:
            vpc_guard(loaded)
    except OpsError as exc:
        raise PackageError(str(exc)) from None
    if require_stream and not loaded.setting(settings.APPROVALS_STREAM_ARN).strip():
        raise PackageError(
            f"stage {stage} names no {settings.APPROVALS_STREAM_ARN}: the events function would "
            "be subscribed to a stand-in stream that does not exist. Run `python -m "
            f"ops.bootstrap --stage {stage}` (it names the table's stream), or package the "
            "CloudFormation path, whose stack wires its own stream (--merge-template "
            "infra/resources.yaml)")


def pin_stage(template_path: Path, stage: str) -> None:
    """Let the packaged stack take no other Stage than the one packaged: its functions carry
    this stage's settings (tables, Zeyi's URL, VPC), so ``Stage=<another>`` must be refused by
    CloudFormation rather than deploy a mixture. The parameter defaults to it too."""
    import yaml  # chalice's own dependency; its templates use the long form (Fn::GetAtt), no tags

    text = template_path.read_text(encoding="utf-8")
    as_json = template_path.suffix == ".json"
    template = json.loads(text) if as_json else yaml.safe_load(text)
    parameter = template.get("Parameters", {}).get("Stage")
    if parameter is None:
        return
    parameter["AllowedValues"] = [stage]
    parameter["Default"] = stage
    parameter["Description"] = (f"Packaged for stage {stage}; no other value is accepted "
                                "(package again for another stage).")
    template_path.write_text(json.dumps(template, indent=2) if as_json else yaml.safe_dump(
        template, sort_keys=False, allow_unicode=True), encoding="utf-8")


def package(stage: str, out_dir: Path, *, project_dir: Path = PROJECT_DIR,
            merge_template: Path | None = None, template_format: str | None = None,
            budget_bytes: int = DEFAULT_BUDGET_BYTES, require_vpc: bool = True,
            require_stream: bool | None = None, timeout_seconds: float = 600) -> PackageResult:
    """Run ``chalice package`` for `stage` into `out_dir`; raise PackageError for the local
    stage, when the stage's VPC settings are empty (unless ``require_vpc`` is false or the stage
    opts out), when it names no approvals stream and no merge template wires one (unless
    ``require_stream`` is false), when chalice fails, when a dependency could not be installed,
    or when the zips exceed `budget_bytes`. A merged template takes only this stage."""
    if require_stream is None:
        require_stream = merge_template is None
    _stage_guards(stage, project_dir, require_vpc=require_vpc, require_stream=require_stream)
    for pattern in ("*.zip", "sam.json", "sam.yaml"):  # stale output would be measured too
        for stale in out_dir.glob(pattern):
            stale.unlink()
    command = chalice_command() + ["--project-dir", str(project_dir), "package",
                                   "--stage", stage]
    if merge_template is not None:
        command += ["--merge-template", str(merge_template)]
    if template_format is not None:
        command += ["--template-format", template_format]
    command.append(str(out_dir))
    env = dict(os.environ)
    # The package is region-independent (the template uses AWS::Region / AWS::Partition), but
    # chalice refuses to run without a region.
    env.setdefault("AWS_DEFAULT_REGION", env.get("AWS_REGION") or "us-east-1")
    with chalice_build_lock(project_dir):
        completed = subprocess.run(command, cwd=project_dir, env=env, capture_output=True,
                                   text=True, timeout=timeout_seconds, check=False)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise PackageError(f"chalice package --stage {stage} failed "
                           f"(exit {completed.returncode}):\n{output}")
    if INSTALL_FAILURE in output:
        raise PackageError(f"chalice could not install a dependency for Lambda:\n{output}")
    zips = {path.name: path.stat().st_size for path in sorted(out_dir.glob("*.zip"))}
    if not zips:
        raise PackageError(f"chalice package wrote no zip into {out_dir}:\n{output}")
    result = PackageResult(out_dir=out_dir, output=output, zips=zips)
    if merge_template is not None:
        pin_stage(result.template, stage)
    if result.total_bytes > budget_bytes:
        raise PackageError(f"packages are {_mb(result.total_bytes)} zipped, over the budget of "
                           f"{_mb(budget_bytes)}: {_sizes(result)}")
    return result


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.2f} MB"


def _sizes(result: PackageResult) -> str:
    return ", ".join(f"{name} {_mb(size)}" for name, size in result.zips.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.package", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", help="output directory (default build/<stage>)")
    parser.add_argument("--merge-template", help="e.g. infra/resources.yaml")
    parser.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_BYTES / 1024 / 1024)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out_dir = Path(args.out) if args.out else PROJECT_DIR / "build" / args.stage
    try:
        result = package(args.stage, out_dir,
                         merge_template=Path(args.merge_template) if args.merge_template else None,
                         budget_bytes=int(args.budget_mb * 1024 * 1024))
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, size in result.zips.items():
        print(f"{out_dir / name}: {_mb(size)} zipped")
    print(f"total {_mb(result.total_bytes)} zipped (budget {args.budget_mb:g} MB); "
          f"template {result.template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
