"""``sevisflow stack up|down|status``: the local Kafka + PostgreSQL for trying sevisflow out.

``up`` starts both services in the background and writes their addresses to
``.local/stacks/<name>/stack.json`` and a ``.env`` file you can ``source`` (``--brokers 3``: a
three-node KRaft cluster; ``--secure``: TLS + SASL/SCRAM, secrets passed as ``file:`` paths, the
StandardAuthorizer with one SCRAM user per principal of the ACL model and their ACLs applied; the ``.env``
is the operator's (a super user), ``principals/<user>.env`` each stage's, DSO's and auditor's);
``down`` stops them and removes their data; ``status`` shows what runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sevisflow.core.errors import SevisflowError
from sevisflow.deploy.local.stack import StackInfo, stack_status, stacks_root, start_stack, stop_stack


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stack",
        help="start/stop a local Kafka + PostgreSQL",
        description="A real Apache Kafka (KRaft) and PostgreSQL (wal_level=logical) on free ports.",
    )
    ssub = p.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    up = ssub.add_parser("up", help="start a stack in the background")
    up.add_argument("--name", default="default", help="stack name (several may run at once)")
    up.add_argument("--no-postgres", action="store_true", help="start only Kafka")
    up.add_argument("--no-kafka", action="store_true", help="start only PostgreSQL")
    up.add_argument(
        "--brokers",
        type=int,
        default=1,
        metavar="N",
        help="Kafka nodes: 1 (default) or 3 for a replicated KRaft cluster (RF 3, min.insync.replicas 2)",
    )
    up.add_argument(
        "--secure",
        action="store_true",
        help="Kafka requires TLS (client certificates from a throwaway CA) and SASL/SCRAM-SHA-512, and "
        "authorizes every request: one user per principal ([acls] settings) with its ACLs",
    )
    up.set_defaults(func=cmd_up)
    down = ssub.add_parser("down", help="stop a stack and delete its data")
    down.add_argument("--name", default="default")
    down.set_defaults(func=cmd_down)
    st = ssub.add_parser("status", help="show the stacks and whether their services answer")
    st.add_argument("--name", default=None, help="only this stack")
    st.set_defaults(func=cmd_status)


def _base(name: str) -> Path:
    return stacks_root() / name


def cmd_up(args: argparse.Namespace) -> int:
    base = _base(args.name)
    if (base / "stack.json").exists():
        raise SevisflowError(
            f"stack {args.name!r} is already up ({base}); run `sevisflow stack down --name {args.name}`"
        )
    if args.brokers < 1:
        raise SevisflowError("--brokers must be at least 1")
    acl_settings = None
    if args.secure:
        from sevisflow.app.cli.common import settings_from_args

        acl_settings = settings_from_args(args)  # [acls] principal names and the topic names the ACLs cover
    info = start_stack(
        name=args.name,
        base=base,
        postgres=not args.no_postgres,
        kafka=not args.no_kafka,
        kafka_brokers=args.brokers,
        kafka_security="sasl_ssl" if args.secure else "plaintext",
        acl_settings=acl_settings,
    )
    env = info.env()
    if args.brokers >= 3 and not args.no_kafka:
        env["SEVISFLOW_KAFKA_REPLICATION_FACTOR"] = "3"
        env["SEVISFLOW_KAFKA_MIN_INSYNC_REPLICAS"] = "2"
    (base / ".env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    print(f"stack {args.name!r} is up. Point sevisflow at it with:\n  source {base / '.env'}")
    for k, v in env.items():
        print(f"  {k}={v}")
    if info.extra.get("principals_dir"):
        print(
            f"That is the operator (a super user: topics apply, acls apply). Each stage, DSO and auditor has its "
            f"own user and rights (docs/SECURITY.md); run it with its file:\n  source "
            f"{Path(info.extra['principals_dir']) / '<user>.env'}"
        )
        for user in sorted(info.kafka.principal_password_files if info.kafka else {}):
            print(f"  {user}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    base = _base(args.name)
    if not (base / "stack.json").exists():
        raise SevisflowError(f"no stack named {args.name!r} in {stacks_root()}")
    stop_stack(StackInfo.load(base), remove=True)
    print(f"stack {args.name!r} stopped and removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    root = stacks_root()
    bases = [_base(args.name)] if args.name else sorted(p for p in root.glob("*") if (p / "stack.json").exists())
    if not bases or not all((b / "stack.json").exists() for b in bases):
        print("no stack is up")
        return 1 if args.name else 0
    for b in bases:
        print(json.dumps(stack_status(StackInfo.load(b))))
    return 0
