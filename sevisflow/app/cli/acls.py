"""``sevisflow acls list|apply|manifests``: least privilege on Kafka, as code (sevisflow/core/acls.py).

``list`` shows every principal's rights (no Kafka needed); ``apply`` prints the diff between the
model and the cluster's ACLs for sevisflow's principals (``+`` create, ``-`` delete, ``=`` unchanged)
and applies it (``--dry-run`` stops after the diff; run it as the admin principal; idempotent);
``manifests`` prints one Strimzi ``KafkaUser`` per principal with the same ACLs.
"""

from __future__ import annotations

import argparse

from sevisflow.app.cli.common import add_json_flag, format_table, print_json, settings_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "acls",
        help="Kafka ACLs per principal (least privilege, derived from the topics)",
        description="Principals: [acls] settings. Rights: sevisflow/core/acls.py (docs/SECURITY.md).",
    )
    asub = p.add_subparsers(dest="acls_command", metavar="ACTION", required=True)
    ls = asub.add_parser("list", help="show every principal's ACLs (no Kafka needed)")
    add_json_flag(ls)
    ls.set_defaults(func=cmd_list)
    a = asub.add_parser("apply", help="show the diff to the cluster's ACLs, then apply it (idempotent)")
    a.add_argument("--dry-run", action="store_true", help="only show the diff")
    a.set_defaults(func=cmd_apply)
    m = asub.add_parser("manifests", help="print Strimzi KafkaUser resources (YAML), one per principal")
    m.add_argument("--cluster", default="sevisflow", help="the Strimzi Kafka resource's name (strimzi.io/cluster)")
    m.add_argument("--namespace", default="sevisflow")
    m.set_defaults(func=cmd_manifests)


def cmd_list(args: argparse.Namespace) -> int:
    from sevisflow.core.acls import acl_model, principal_role

    settings = settings_from_args(args)
    roles = principal_role(settings)
    acls = acl_model(settings)
    if args.json:
        print_json(
            [
                {
                    "principal": a.principal,
                    "role": roles[a.principal[5:]],
                    "operation": a.operation,
                    "resource_type": a.resource_type,
                    "name": a.name,
                    "pattern": a.pattern,
                }
                for a in acls
            ]
        )
        return 0
    print(
        format_table(
            ["PRINCIPAL", "ROLE", "OPERATION", "RESOURCE", "NAME", "PATTERN"],
            [
                [a.principal, roles[a.principal[5:]], a.operation.upper(), a.resource_type, a.name, a.pattern]
                for a in acls
            ],
        )
    )
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from sevisflow.core.acls import apply_acls

    settings = settings_from_args(args)
    print(
        f"acls: sevisflow principals against {settings.kafka.bootstrap_servers}"
        + (" (dry run)" if args.dry_run else "")
    )
    plan = apply_acls(settings, dry_run=args.dry_run, show=print)
    if not args.dry_run and not plan.empty():
        print("applied")
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    from sevisflow.core.acls import kafka_user_resources
    from sevisflow.core.topics import to_yaml

    settings = settings_from_args(args)
    print(to_yaml(kafka_user_resources(settings, cluster=args.cluster, namespace=args.namespace)), end="")
    return 0
