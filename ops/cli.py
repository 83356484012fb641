"""``python -m ops``: the operator's commands, one argparse tree; ``--help`` at every level.

Every command takes ``--stage`` (names and settings from ``.chalice/config.json``) and
``--region``; it prints its result to stdout, or one line starting with ``error:`` to stderr and
exits 1 (2 for a usage error). docs/operations.md shows each in its place.
"""
from __future__ import annotations

import argparse

from ops.common import run
from ops.stage_config import CONFIG_PATH


def _stage_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--stage", required=True, help="stage in .chalice/config.json (dev, prod)")
    options.add_argument("--region", help="AWS region (default: AWS_REGION, then "
                                          "AWS_DEFAULT_REGION, then the profile's)")
    options.add_argument("--config", default=str(CONFIG_PATH), help=argparse.SUPPRESS)
    return options


def _group(subparsers, name: str, help_text: str):
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


EPILOG = """\
exit status (every command):
  0  done (or already as it should be)
  1  failed, or a check found problems: one `error:` line or the list says why
  2  usage error
  3  nothing to do (an empty dead-letter queue, a confirmation declined)
  4  a next step is not due yet: run the command again when its output says

AWS access: the region from --region, AWS_REGION or AWS_DEFAULT_REGION; credentials from the
usual chain (AWS_PROFILE, ...). docs/operations.md sets both once, at the top.
"""
# Commands with their own module and parser: `python -m ops bootstrap ...` runs
# `python -m ops.bootstrap ...`.
DELEGATED = {
    "bootstrap": "create or complete a stage's tables, secrets, event bus, dead-letter queue "
                 "and log groups (python -m ops bootstrap --help)",
    "package": "build and size-check a stage's Lambda packages with chalice package "
               "(python -m ops package --help)",
}


def build_parser() -> argparse.ArgumentParser:
    from ops import approvals, config_commands, deploy, events, files, secret_rotation, sign_check

    stage = _stage_options()
    parser = argparse.ArgumentParser(
        prog="python -m ops", description="Operate the Jinrun approval gateway: create a "
        "stage's resources, check and deploy it, look at approvals, rotate secrets, debug a "
        "partner's sign. docs/operations.md walks through them in order.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for name, help_text in DELEGATED.items():  # listed here, parsed by their own module
        groups.add_parser(name, help=help_text, add_help=False).add_argument(
            "args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    approvals_group = _group(groups, "approvals", "look at approvals")
    show = approvals_group.add_parser(
        "show", parents=[stage], help="status, attempts and callbacks of one code",
        description="Status, attempts and callbacks of one code, newest first, as tables "
                    "(what GET /audit/{code} answers).")
    show.add_argument("code")
    show.add_argument("--json", action="store_true", help="print the record as JSON, for scripts")
    show.set_defaults(handler=approvals.show_command)

    listing = approvals_group.add_parser(
        "list", parents=[stage], help="open approvals, oldest first",
        description="The open approvals (SUBMITTING, CANCELLING, PENDING, or one --status), "
                    "oldest first, with how long each has been open (a Query per status on the "
                    "open-approvals index, never a Scan): SUBMITTING past its lease, CANCELLING "
                    "past its lease and PENDING for days are the stuck ones.")
    listing.add_argument("--status", choices=["SUBMITTING", "PENDING", "CANCELLING"],
                         help="only this status (default: all three open ones)")
    listing.add_argument("--older-than", metavar="DURATION",
                         help="only those in that status for longer: 90s, 15m, 2h, 7d")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.add_argument("--json", action="store_true", help="print them as JSON, for scripts")
    listing.set_defaults(handler=approvals.list_command)

    resolve = approvals_group.add_parser(
        "resolve", parents=[stage], help="close an approval stuck open",
        description="An operator's override for an approval stuck open: FAILED when Zeyi "
                    "created nothing, TERMINATED when Zeyi ended it without calling back. Who "
                    "and why are kept in its history; a decision Zeyi reports later still "
                    "counts.")
    resolve.add_argument("code")
    resolve.add_argument("--status", required=True, choices=["TERMINATED", "FAILED"])
    resolve.add_argument("--reason", required=True, help="why: kept in the history")
    resolve.add_argument("--by", help="who (default: the caller's AWS identity)")
    resolve.add_argument("--yes", action="store_true",
                         help="do not ask for confirmation (needed when stdin is not a terminal)")
    resolve.set_defaults(handler=approvals.resolve_command)

    files_group = _group(groups, "files", "the file links approvers click")
    revoke = files_group.add_parser(
        "revoke", parents=[stage], help="end every file link of one code at once",
        description="End every file link of one code issued until now (a leaked link): each "
                    "click answers 410 from now on. A later send of the code gets new links.")
    revoke.add_argument("code")
    revoke.set_defaults(handler=files.revoke_command)

    secrets_group = _group(groups, "secrets", "rotate the gateway's credentials")
    add = secrets_group.add_parser(
        "add-inbound", parents=[stage], help="add an inbound credential next to the current ones",
        description="Add an inbound credential (what Zeyi signs with) to the stage's inbound "
                    "secret, next to the current ones; its appSecret is generated, or read from "
                    "stdin. Creates the secret when it does not exist yet.")
    add.add_argument("--app-key", help="its appKey (default: jinrun-<stage>-<date>-<random>)")
    add.add_argument("--from-stdin", action="store_true",
                     help="read the appSecret from the first line of stdin instead of "
                          "generating it")
    add.add_argument("--with-iv", action="store_true",
                     help="give it an iv (always, when the stage's callbacks are encrypted)")
    add.add_argument("--legacy-sign", action="store_true",
                     help="accept Zeyi SDK 1.0.0's header-only sign for it")
    add.add_argument("--show", action="store_true",
                     help="print the appSecret (and iv) once, to hand over to Zeyi")
    add.set_defaults(handler=secret_rotation.add_inbound_command)

    inbound_list = secrets_group.add_parser(
        "list-inbound", parents=[stage], help="the inbound appKeys, oldest first",
        description="The appKeys the stage accepts from Zeyi, oldest first, one a line (no "
                    "secret): after a rotation the first is the one to retire.")
    inbound_list.set_defaults(handler=secret_rotation.list_inbound_command)

    retire = secrets_group.add_parser(
        "retire-inbound", parents=[stage], help="remove an inbound credential",
        description="Remove an inbound credential once Zeyi has switched: refused while it was "
                    "used within --idle-days (see last-seen) and for the last credential.")
    retire.add_argument("app_key", metavar="APPKEY")
    retire.add_argument("--idle-days", type=float, default=1.0,
                        help="refuse when Zeyi used it within this many days (default 1)")
    retire.add_argument("--force", action="store_true", help="skip the last-seen check")
    retire.set_defaults(handler=secret_rotation.retire_inbound_command)

    seen = secrets_group.add_parser(
        "last-seen", parents=[stage], help="when Zeyi last used an inbound appKey",
        description="When Zeyi last used an inbound appKey: a CloudWatch Logs Insights query "
                    "over the API handler's log group.")
    seen.add_argument("app_key", metavar="APPKEY")
    seen.add_argument("--days", type=float, default=30.0, help="how far back (default 30)")
    seen.set_defaults(handler=secret_rotation.last_seen_command)

    rotate = secrets_group.add_parser(
        "rotate-token-key", parents=[stage], help="rotate the access-token signing key",
        description="Take the next step of a token-key rotation: add a new key (verifies only); "
                    "after SECRETS_CACHE_SECONDS make it the signing key; after TOKEN_TTL_SECONDS "
                    "more retire the old key. Run it again until it says the rotation is "
                    "complete; it says when.")
    rotate.set_defaults(handler=secret_rotation.rotate_token_key_command)

    sign_group = _group(groups, "sign", "debug a partner's signed request")
    check = sign_group.add_parser(
        "check", parents=[stage], help="which of the gateway's checks a request fails, and why",
        description="Run the gateway's checks on a captured request, in its order, against the "
                    "stage's credentials, and say which fails and why. Prints no secret or sign.")
    check.add_argument("--headers", required=True, metavar="FILE",
                       help="the request's headers: a JSON object or 'Name: value' lines")
    check.add_argument("--body", required=True, metavar="FILE", help="the request's exact body")
    check.add_argument("--route", choices=["callback", "token"], default="callback",
                       help="the route it was sent to (default callback)")
    check.add_argument("--at", metavar="TIME",
                       help="when it was received: epoch ms or ISO 8601 (default now)")
    check.set_defaults(handler=sign_check.sign_check_command)

    events_group = _group(groups, "events", "the approval events' delivery")
    replay = events_group.add_parser(
        "replay-dlq", parents=[stage], help="publish again the events in the dead-letter queue",
        description="Publish again the approval events whose stream records ended in the "
                    "stage's dead-letter queue (read back from the approvals table's stream, "
                    "which keeps them 24 hours), and remove each message once all its events "
                    "are published. The events are the same (same eventId): consumers drop "
                    "duplicates.")
    replay.add_argument("--max-messages", type=int, default=100,
                        help="at most this many messages (100)")
    replay.add_argument("--dry-run", action="store_true",
                        help="say which records each message names; publish nothing")
    replay.set_defaults(handler=events.replay_dlq_command)
    archive_replay = events_group.add_parser(
        "replay", parents=[stage], help="replay a period of the archive to one consumer's rule",
        description="Send the approval events of a period again, from the bus's archive, to "
                    "one rule only (EventBridge StartReplay with FilterArns): the consumer "
                    "that lost them gets them (same eventId), and no other consumer does.")
    archive_replay.add_argument("--since", required=True, metavar="TIME",
                                help="start of the period: ISO 8601 (UTC unless an offset is "
                                     "given) or epoch ms")
    archive_replay.add_argument("--until", required=True, metavar="TIME",
                                help="end of the period (excluded), as --since")
    archive_replay.add_argument("--rule", required=True, metavar="NAME",
                                help="the consumer's rule on the stage's bus")
    archive_replay.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                                help="wait up to this long for the replay to end (default: "
                                     "do not wait)")
    archive_replay.set_defaults(handler=events.replay_command)
    mapping = events_group.add_parser(
        "configure-mapping", parents=[stage],
        help="failure handling of the events function's stream subscription",
        description="Give the stream subscription that `chalice deploy` created for "
                    "publish_approval_events what chalice cannot: partial batch failures, "
                    "bisection, bounded retries and the stage's dead-letter queue. `python -m "
                    "ops deploy` runs it after each deploy.")
    mapping.set_defaults(handler=events.configure_mapping_command)

    config_group = _group(groups, "config", "check a stage's configuration")
    config_check = config_group.add_parser(
        "check", parents=[stage], help="everything a deploy needs, or a list of what is wrong",
        description="Check everything a deploy of the stage needs: VPC settings, Zeyi's URL, a "
                    "policy file per function, the secrets, the tables; on the chalice path also "
                    "the stream, bus, archive, dead-letter queue and log groups the bootstrap "
                    "makes. Exits 1 with the list of problems, each with the command that fixes "
                    "it.")
    config_check.add_argument("--path", choices=list(config_commands.PATHS),
                              default=config_commands.CHALICE,
                              help="the deploy path: chalice (python -m ops deploy, the default) "
                                   "or cloudformation (the packaged stack)")
    config_check.set_defaults(handler=config_commands.check_command)
    fill = config_group.add_parser(
        "fill-vpc", parents=[stage], help="VPC settings from the egress stack's outputs",
        description="Write the egress stack's subnets and security group into the stage in "
                    ".chalice/config.json and print the egress IPs Zeyi must whitelist.")
    fill.add_argument("--stack", help="the stack of infra/vpc-egress.yaml (default "
                                      "jinrun-gateway-egress-<stage>)")
    fill.set_defaults(handler=config_commands.fill_vpc_command)
    stream_fill = config_group.add_parser(
        "fill-stream", parents=[stage], help="the approvals table's stream, for chalice deploy",
        description="Write the approvals table's current stream ARN into the stage in "
                    ".chalice/config.json (APPROVALS_STREAM_ARN): chalice deploy subscribes the "
                    "approval events function to it. Run it after the bootstrap, and again if "
                    "the stream is ever turned off and on (its ARN changes).")
    stream_fill.set_defaults(handler=events.fill_stream_command)

    deploy_parser = groups.add_parser(
        "deploy", parents=[stage], help="chalice deploy, once config check passes",
        description="Run `config check` and, when it passes, `chalice deploy --stage S`, then "
                    "`events configure-mapping`. A rerun after a failure reuses what the failed "
                    "run created.")
    deploy_parser.add_argument("--dry-run", action="store_true",
                               help="check only; do not run chalice")
    deploy_parser.add_argument("chalice_args", nargs="*", metavar="CHALICE_ARG",
                               help="passed on to chalice deploy (after --)")
    deploy_parser.set_defaults(handler=deploy.deploy_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        from ops import bootstrap, package

        delegate = {"bootstrap": bootstrap.main, "package": package.main}[argv[0]]
        return delegate(argv[1:])
    args = build_parser().parse_args(argv)
    return run(lambda: args.handler(args))
