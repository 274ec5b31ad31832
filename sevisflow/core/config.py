"""The one settings object of sevisflow.

Settings come from a TOML file (``sevisflow.toml`` by default) and from
``SEVISFLOW_<SECTION>_<KEY>`` environment variables, which win over the file.
Every field is declared once, in the section dataclasses below, with its type,
default and a docstring-like ``help``. Unknown keys and values of the wrong type
are rejected at start with a message that names the key, so a typo never
silently falls back to a default. Secrets are :class:`Secret` values whose
``repr``/``str`` is masked, so printing or logging the config never leaks them.

Connector keys also accept the dotted names Debezium users know
(``slot.name``, ``publication.name``, ``topic.prefix``, ``snapshot.mode`` …):
each field's ``alias`` says which.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sevisflow.core.errors import ConfigError

ENV_PREFIX = "SEVISFLOW_"
DEFAULT_CONFIG_FILE = "sevisflow.toml"
PROGRAMS = "exchange_programs"
"""A list-of-tables section: ``[[exchange_programs]]``."""
SCHOOLS = "schools"
"""The other list-of-tables section: ``[[schools]]`` (member schools of a many-school deployment)."""
LIST_SECTIONS = (PROGRAMS, SCHOOLS)


class Secret:
    """A string that is never printed: ``str()`` and ``repr()`` show ``****``.

    Use :meth:`reveal` at the single place where the value is handed to a client.
    A value of the form ``file:/path`` is read from that file when revealed, so
    secrets can live in mounted files instead of the TOML.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        if self._value.startswith("file:"):
            return Path(self._value[5:]).read_text(encoding="utf-8").strip()
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "****" if self._value else ""


def setting(default: Any, help: str, alias: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a setting: its default, what it is for, and optional Debezium-style alias."""
    meta = {"help": help, "alias": alias, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=meta)  # a fresh copy
    return field(default=default, metadata=meta)


def _check_range(
    section: str, obj: object, names: tuple[str, ...], low: float, high: float | None = None, unit: str = ""
) -> None:
    """Each named setting of ``obj`` within [low, high] (no upper bound when None), or a ConfigError naming it."""
    for name in names:
        value = getattr(obj, name)
        if not (value >= low and (high is None or value <= high)):  # NaN fails too
            use = f"use {low:g}–{high:g}{unit}" if high is not None else f"must be at least {low:g}"
            raise ConfigError(f"{section}.{name} = {value!r}: {use}")


def _check_port(where: str, port: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(f"{where} = {port} is not a TCP port: use {low}–65535")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = setting(
        "127.0.0.1:9092", "Kafka bootstrap servers, comma separated", alias="bootstrap.servers"
    )
    security_protocol: str = setting(
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        alias="security.protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    ssl_ca_location: str = setting("", "CA bundle that signed the brokers' certificates", alias="ssl.ca.location")
    ssl_certificate_location: str = setting(
        "", "client certificate (PEM) for mutual TLS", alias="ssl.certificate.location"
    )
    ssl_key_location: str = setting("", "client private key (PEM) for mutual TLS", alias="ssl.key.location")
    ssl_key_password: Secret = setting(Secret(""), "password of the client key", alias="ssl.key.password")
    sasl_mechanism: str = setting(
        "SCRAM-SHA-512", "SASL mechanism", alias="sasl.mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    )
    sasl_username: str = setting("", "SASL user name", alias="sasl.username")
    sasl_password: Secret = setting(Secret(""), "SASL password (or file:/path)", alias="sasl.password")
    replication_factor: int = setting(1, "replication factor for topics sevisflow creates")
    min_insync_replicas: int = setting(1, "min.insync.replicas for topics sevisflow creates")
    partitions: int = setting(3, "default partition count for topics sevisflow creates")
    topics_file: str = setting(
        "", "topic specs (TOML) for `sevisflow topics apply`; empty = the built-in deploy/topics.toml"
    )
    consumer_queue_mb: int = setting(
        16,
        "most MiB of records a stage's consumer fetches ahead (librdkafka queued.max.messages.kbytes): "
        "bounds a stage's memory while it is behind",
    )
    reorder_window_mb: int = setting(
        24,
        "normalize: while it is behind, fetched records up to this many MiB (keys and values) are held back and "
        "handed over oldest first across partitions, so that a SIS transaction's rows, spread over several "
        "tables' topics, meet in one Kafka transaction instead of waiting in normalize's state; 0 = in the "
        "order fetched",
    )
    commit_interval_ms: int = setting(
        200,
        "how long a transactional stage gathers input after each Kafka transaction before the next one (a "
        "record reaching an idle stage is taken at once): lower = less latency, more transactions, more CPU "
        "in the stages and the broker",
    )

    def __post_init__(self) -> None:
        _check_range("kafka", self, ("partitions", "replication_factor", "min_insync_replicas", "consumer_queue_mb"), 1)
        _check_range("kafka", self, ("commit_interval_ms",), 0, 60_000, " (ms)")
        _check_range("kafka", self, ("reorder_window_mb",), 0, 4096, " (MiB)")
        if self.min_insync_replicas > self.replication_factor:
            raise ConfigError(
                f"kafka.min_insync_replicas = {self.min_insync_replicas} is more than "
                f"kafka.replication_factor = {self.replication_factor}: no write could ever succeed; "
                "lower min_insync_replicas"
            )


@dataclass(frozen=True)
class PostgresSettings:
    host: str = setting("127.0.0.1", "SIS database host", alias="database.hostname")
    port: int = setting(5432, "SIS database port", alias="database.port")
    dbname: str = setting("sis", "SIS database name", alias="database.dbname")
    user: str = setting("postgres", "user with REPLICATION and SELECT on the captured tables", alias="database.user")
    password: Secret = setting(Secret(""), "password (or file:/path)", alias="database.password")
    sslmode: str = setting("prefer", "libpq sslmode", alias="database.sslmode")

    def __post_init__(self) -> None:
        _check_port("postgres.port", self.port)

    def conninfo(self, **extra: str) -> str:
        """A libpq conninfo string (the password revealed only here)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            **extra,
        }
        pw = self.password.reveal() if self.password else ""
        if pw:
            parts["password"] = pw
        return " ".join(f"{k}={_quote_conninfo(v)}" for k, v in parts.items())


def _quote_conninfo(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class ConnectorSettings:
    name: str = setting("sevisflow-sis", "logical connector name (source.name)", alias="name")
    topic_prefix: str = setting("sis", "prefix of change topics: <prefix>.<schema>.<table>", alias="topic.prefix")
    slot_name: str = setting("sevisflow", "logical replication slot", alias="slot.name")
    publication_name: str = setting("sevisflow_sis", "publication the slot reads", alias="publication.name")
    publication_autocreate_mode: str = setting(
        "filtered",
        "disabled | all_tables | filtered (like Debezium)",
        alias="publication.autocreate.mode",
        choices=("disabled", "all_tables", "filtered"),
    )
    table_include_list: list[str] = setting(
        [
            "public.person",
            "public.immigration",
            "public.address",
            "public.program",
            "public.term",
            "public.enrollment",
            "public.finance",
            "public.dependent",
            "public.student_authorization",
        ],
        "captured tables, schema.table",
        alias="table.include.list",
    )
    snapshot_mode: str = setting(
        "initial",
        "initial | never | initial_only | when_needed",
        alias="snapshot.mode",
        choices=("initial", "never", "initial_only", "when_needed"),
    )
    snapshot_fetch_size: int = setting(10000, "rows per snapshot chunk", alias="snapshot.fetch.size")
    heartbeat_interval_ms: int = setting(10000, "heartbeat period; 0 disables", alias="heartbeat.interval.ms")
    provide_transaction_metadata: bool = setting(
        True, "write BEGIN/END to <prefix>.transaction", alias="provide.transaction.metadata"
    )
    schemas_enable: bool = setting(
        False, "JsonConverter schemas.enable: wrap payloads with their schema", alias="value.converter.schemas.enable"
    )
    offsets_dir: str = setting(".local/connector", "where the connector keeps its snapshot progress")
    offset_flush_interval_ms: int = setting(
        1000,
        "how often the connector waits for Kafka's acks and then confirms the LSN to PostgreSQL",
        alias="offset.flush.interval.ms",
    )
    decimal_handling_mode: str = setting(
        "precise",
        "numeric columns: precise (Connect Decimal, base64 bytes) | string | double",
        alias="decimal.handling.mode",
        choices=("precise", "string", "double"),
    )
    tombstones_on_delete: bool = setting(
        True, "send a tombstone (null value) after each delete", alias="tombstones.on.delete"
    )
    slot_max_retries: int = setting(6, "attempts while the slot is in use by another process", alias="slot.max.retries")
    slot_retry_delay_ms: int = setting(10000, "wait between those attempts", alias="slot.retry.delay.ms")
    errors_max_retries: int = setting(
        -1, "restarts after transient errors (PostgreSQL/Kafka down); -1 = no limit", alias="errors.max.retries"
    )
    column_exclude_list: list[str] = setting(
        [],
        "columns never sent to the change topics: regular expressions on schema.table.column",
        alias="column.exclude.list",
    )
    column_mask_hash: dict[str, str] = setting(
        {},
        "hash-masked columns, written with Debezium's key names: "
        '"column.mask.hash.v2.SHA-256.with.salt.<salt>" = "<regex on schema.table.column>, …"',
    )


# SEVIS's OrganizationIDType: a school code (F/M schools) or an exchange-visitor program number.
ORG_ID_PATTERN = re.compile(r"[A-Z]{3}214F\d{8}|P-[1-4]-\d{5}|G-[1-7]-\d{5}")


@dataclass(frozen=True)
class SchoolSettings:
    org_id: str = setting(
        "",
        "REQUIRED: the school's SEVIS code (OrgID), e.g. ABC214F12345000 — no default, "
        "because a made-up code would send a school's records under another OrgID",
    )
    timezone: str = setting("America/Chicago", "the school's local time zone (scheduled close, dates)")
    mapping_file: str = setting("deploy/sis/mapping.toml", "how the SIS tables map to the canonical student")
    close_at: str = setting("", "scheduled daily close, local HH:MM; empty = off")
    close_dso: str = setting("", "SEVIS user id (10 chars) recorded for scheduled closes")
    close_early_when_due: bool = setting(
        False,
        "with close_at: also close at once (a scheduled close, not "
        "reviewed) when a ready record would be overdue before the next "
        "scheduled close ([deadlines] rules)",
    )
    dso_user_ids: list[str] = setting(
        [],
        "SEVIS user ids (10 chars each) of the school's DSOs: the batcher refuses "
        "close/hold/release/report from anyone else",
    )
    dso_principals: list[str] = setting(
        [],
        'with Kafka authentication: "principal=SEVISUSER" entries, e.g. '
        '"User:alice=JSMITH0001"; a DSO command must come from the principal '
        "mapped to its user id (empty = principals are not checked)",
    )
    default_dso: str = setting("", "SEVIS user id the DSO commands use when --dso is not given (echoed)")

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"school.timezone = {self.timezone!r} is not a known time zone: use an IANA name "
                "such as America/Chicago"
            ) from None
        if self.close_at and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", self.close_at):
            raise ConfigError(
                f"school.close_at = {self.close_at!r}: use local HH:MM (24-hour), e.g. 17:30, "
                "or leave it empty for no scheduled close"
            )
        if self.close_early_when_due and not self.close_at:
            raise ConfigError(
                "school.close_early_when_due = true needs school.close_at (the scheduled close it "
                "runs ahead of): set close_at, or turn close_early_when_due off"
            )
        if self.org_id and not ORG_ID_PATTERN.fullmatch(self.org_id):
            raise ConfigError(
                f"school.org_id = {self.org_id!r} is not a SEVIS OrgID: use your school code as SEVIS "
                "shows it (3 letters, 214F, 8 digits, e.g. ABC214F12345000) or a J program number "
                "(P-1-12345)"
            )

    def require_org_id(self) -> str:
        """The OrgID, or a ConfigError naming the fix: every stage that reports for a school needs it."""
        if not self.org_id:
            raise ConfigError(
                'school.org_id is not set: add org_id = "<your SEVIS school code>" under [school] '
                f"in the config file (or set {ENV_PREFIX}SCHOOL_ORG_ID)"
            )
        return self.org_id


@dataclass(frozen=True)
class SevisSettings:
    xsd_dir: str = setting("../shared/sevis/xsd", "folder with the official SEVIS XSDs (from ICE; never committed)")
    outbox_dir: str = setting(".local/outbox", "where validated batch XML files are written")
    environment: str = setting("test", "test | production", choices=("test", "production"))
    upload_url: str = setting("", "batchUpload URL; empty = the environment's default")
    download_url: str = setting("", "batchDownload URL; empty = the environment's default")
    client_cert: str = setting("", "client certificate: PEM file, or PKCS#12 (.p12/.pfx)")
    client_key: str = setting("", "client key PEM (when client_cert is PEM)")
    client_key_password: Secret = setting(Secret(""), "password of the key or PKCS#12 file (or file:/path)")
    ca_bundle: str = setting("", "CA bundle to verify SEVIS's server certificate; empty = system CAs")
    user_id: str = setting("", "SEVIS batch user id (10 chars) sent with uploads")
    poll_interval_s: float = setting(60.0, "seconds between result downloads for a pending batch")
    quarantine_dir: str = setting(
        ".local/quarantine", "where batches that fail XSD validation are kept (never uploaded)"
    )
    http_timeout_s: float = setting(120.0, "timeout of one upload/download HTTPS request")
    retry_base_s: float = setting(30.0, "first back-off after a network error, HTTP 5xx or S0001 (doubles per try)")
    retry_max_s: float = setting(1800.0, "longest back-off between tries of one upload or download")
    repost_after_s: float = setting(
        1800.0,
        "an upload whose outcome is unknown is posted again (same BatchID) only "
        "after SEVIS answered S0031 for this long since our last POST ...",
    )
    repost_after_checks: int = setting(3, "... and at least this many times since that POST")
    max_posts: int = setting(
        1,
        "most POSTs of one BatchID whose outcome is unknown; 1 (the default) never posts a "
        "batch again by itself: an unknown outcome is settled by downloading, or waits for "
        "the operator (`sevisflow sink requeue`); more allows re-posting after S0031",
    )
    max_response_bytes: int = setting(134217728, "largest HTTPS answer read from SEVIS (the download zip included)")
    max_unzipped_bytes: int = setting(536870912, "largest total size of the files in a downloaded results zip")
    max_zip_entries: int = setting(2000, "most files in a downloaded results zip")
    max_entry_bytes: int = setting(67108864, "largest single file in a results zip (the transaction log included)")
    max_compression_ratio: float = setting(200.0, "largest uncompressed/compressed ratio of one zip entry")

    def __post_init__(self) -> None:
        _check_range(
            "sevis",
            self,
            (
                "max_posts",
                "max_response_bytes",
                "max_unzipped_bytes",
                "max_zip_entries",
                "max_entry_bytes",
                "max_compression_ratio",
                "repost_after_checks",
            ),
            1,
        )
        _check_range("sevis", self, ("repost_after_s",), 0)

    ENDPOINTS: ClassVar[dict[str, tuple[str, str]]] = {
        "test": (
            "https://egov.ice.gov/sbtsevisbatch/action/batchUpload",
            "https://egov.ice.gov/sbtsevisbatch/action/batchDownload",
        ),
        "production": (
            "https://egov.ice.gov/sevisbatch/action/batchUpload",
            "https://egov.ice.gov/sevisbatch/action/batchDownload",
        ),
    }

    def upload_endpoint(self) -> str:
        """The batchUpload URL: ``upload_url`` or the environment's default (SBT test / production)."""
        return self.upload_url or self.ENDPOINTS[self.environment][0]

    def download_endpoint(self) -> str:
        """The batchDownload URL: ``download_url`` or the environment's default."""
        return self.download_url or self.ENDPOINTS[self.environment][1]


@dataclass(frozen=True)
class TopicSettings:
    students: str = setting("sevisflow.students", "compacted canonical student view")
    events: str = setting("sevis.events", "SEVIS events, keyed by OrgID")
    commands: str = setting("sevis.batch.commands", "DSO / scheduler commands")
    batches: str = setting("sevis.batches", "batch lifecycle")
    results: str = setting("sevis.results", "per-record SEVIS results")
    open_batches: str = setting("sevis.batch.open", "compacted open batch per school (what `batch show` reads)")
    dlq: str = setting("sevisflow.dlq", "dead letters with reason and source position")
    worklist: str = setting("sevis.worklist", "the DSO worklist's done marks (who, when, note)")
    ledger: str = setting(
        "sevis.audit.ledger",
        "compacted: the audit ledger's head, anchored by the sinks "
        "each time they seal (verify checks the ledger file against it)",
    )


@dataclass(frozen=True)
class MetricsSettings:
    port: int = setting(
        0, "port of /metrics, /health and /ready for this process; 0 = off (conventional ports: deploy/systemd/*.env)"
    )
    host: str = setting("0.0.0.0", "address the metrics server listens on")
    stall_after_s: float = setting(120.0, "/health fails when a stage's loop has not turned for this long")
    progress_interval_s: float = setting(
        60.0,
        "how often long-running commands log a progress line (records "
        "in/out, consumer lag per stage; snapshot rows every quarter of it)",
    )

    def __post_init__(self) -> None:
        _check_port("metrics.port", self.port, allow_zero=True)
        if not self.progress_interval_s > 0:
            raise ConfigError(f"metrics.progress_interval_s = {self.progress_interval_s}: must be above 0 seconds")


PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


@dataclass(frozen=True)
class AclSettings:
    """The Kafka principals (SASL user names) of each role, for the ACLs of sevisflow/core/acls.py."""

    admin: str = setting(
        "sevisflow-admin",
        "operator principal: applies topics and ACLs (a super user of the local secure stack; holds no ACL of its own)",
    )
    connector: str = setting("sevisflow-connector", "principal of the connector stage")
    normalize: str = setting("sevisflow-normalize", "principal of the normalize stage")
    events: str = setting("sevisflow-events", "principal of the sevis_events stage")
    batcher: str = setting("sevisflow-batcher", "principal of the batcher stage")
    sink_xml: str = setting("sevisflow-sink-xml", "principal of the XML sink")
    sink_sevis: str = setting("sevisflow-sink-sevis", "principal of the SEVIS sink")
    dso: list[str] = setting(["sevisflow-dso"], "principals of the DSOs (one per person is best)")
    auditor: list[str] = setting(["sevisflow-auditor"], "principals of auditors (read only)")

    def __post_init__(self) -> None:
        # stage roles may share a principal (it gets the union: `sevisflow run` in one process);
        # a DSO, an auditor and the admin never share one with anybody else
        kind = {"admin": "admin", "dso": "dso", "auditor": "auditor"}
        seen: dict[str, str] = {}
        for role in (
            "admin",
            "connector",
            "normalize",
            "events",
            "batcher",
            "sink_xml",
            "sink_sevis",
            "dso",
            "auditor",
        ):
            value = getattr(self, role)
            for name in value if isinstance(value, list) else [value]:
                if not PRINCIPAL_NAME.fullmatch(name):
                    raise ConfigError(
                        f"acls.{role} = {name!r} is not a principal name: use letters, digits and "
                        ". _ @ - (the SASL user name, without 'User:')"
                    )
                if name in seen and (kind.get(role, "stage") != kind.get(seen[name], "stage") or role in kind):
                    raise ConfigError(
                        f"acls.{role}: {name!r} is also acls.{seen[name]}; a DSO, an auditor and the "
                        "admin each need a principal of their own, or least privilege is lost"
                    )
                seen.setdefault(name, role)


@dataclass(frozen=True)
class DeadlineSettings:
    limits: dict[str, int] = setting(
        {},
        "legal limits in days to override, by rule (name_address, program_change, dependents, status_end, "
        "discipline, registration), e.g. a stricter internal target: { name_address = 14 }",
    )
    soon_days: int = setting(7, "a record due within this many days is 'soon'")
    urgent_days: int = setting(2, "a record due within this many days is 'urgent'")

    def __post_init__(self) -> None:
        if not 0 <= self.urgent_days <= self.soon_days:
            raise ConfigError(
                f"deadlines: urgent_days = {self.urgent_days} and soon_days = {self.soon_days}: "
                "use 0 ≤ urgent_days ≤ soon_days"
            )


ROCKSDB_COMPRESSIONS = ("none", "lz4", "snappy", "zstd")
"""The block compressions ``[state] compression`` offers (all built into rocksdict's RocksDB)."""


@dataclass(frozen=True)
class StateSettings:
    """Where the processors keep their working state (the changelog topics stay the source of truth)."""

    backend: str = setting(
        "rocksdb",
        "processor state store: rocksdb (on disk under state.dir: memory bounded by the "
        "cache and write buffers below) or memory (Python dicts: memory grows with the SIS; "
        "for tests and tiny schools); both are rebuilt from the changelog topics on start",
        choices=("memory", "rocksdb"),
    )
    dir: str = setting(
        ".local/state",
        "folder of the rocksdb state stores, one sub-folder per stage instance "
        "(0700, files 0600: state holds personal data)",
    )
    block_cache_mb: int = setting(64, "rocksdb: block cache per stage instance, in MiB")
    write_buffer_mb: int = setting(16, "rocksdb: memtable size per stage instance, in MiB (two may be in memory)")
    compression: str = setting(
        "snappy",
        "rocksdb: how the state stores compress their files (RocksDB's default, snappy; none, lz4, zstd): "
        "disk against CPU on every read from disk and every compaction; at 100,000 students none and snappy "
        "cost the stages the same CPU",
        choices=ROCKSDB_COMPRESSIONS,
    )
    cache_entries: int = setting(
        10000,
        "rocksdb: decoded state values normalize keeps in memory between Kafka "
        "transactions (least recently used dropped first); 0 = keep every one",
    )
    release_slice_rows: int = setting(
        4000,
        "normalize: held initial-snapshot rows applied per Kafka transaction when the snapshot is "
        "released (whole students; bounds that transaction's memory and time whatever the school's size)",
    )

    def __post_init__(self) -> None:
        _check_range("state", self, ("block_cache_mb", "write_buffer_mb"), 1, 65536, " (MiB)")
        _check_range("state", self, ("release_slice_rows",), 1, 10_000_000, " (rows)")
        if self.cache_entries < 0:
            raise ConfigError(f"state.cache_entries = {self.cache_entries} is negative: use 0 (no bound) or more")
        if not self.dir.strip():
            raise ConfigError("state.dir is empty: name the folder for the rocksdb state stores")


# J-1 exchange visitor programs: their EV batches go under the program number (SEVIS's ProgramNumberType).
PROGRAM_NUMBER_PATTERN = re.compile(r"P-[1-4]-\d{5}|G-[1-7]-\d{5}")
SEVIS_USER_ID = re.compile(r"[^\s]{10}")


def _check_user_ids(users: Iterable[tuple[str, str]], officer: str) -> None:
    """Raise on the first ``(field, value)`` whose value cannot be a SEVIS user id (exactly 10 characters, no
    blanks): SEVIS refuses a batch signed by it. ``officer`` names whose user name to use instead (e.g. RO/ARO)."""
    for where, value in users:
        if not SEVIS_USER_ID.fullmatch(value) or not value.isprintable():
            raise ConfigError(
                f"{where} = {value!r} is not a SEVIS user id: use the {officer}'s SEVIS user name, exactly 10 "
                "characters without blanks"
            )


@dataclass(frozen=True)
class ExchangeProgram:
    """One J-1 exchange visitor program the institution sponsors (a ``[[exchange_programs]]`` table).

    Why a list and not a key of [school]: SEVIS takes EV records only in batches under the program number,
    one batch stream per program, signed by that program's RO/ARO; the school's F/M OrgID never carries them.
    """

    program_number: str = setting(
        "",
        "REQUIRED: the program number SEVIS shows for the sponsor program, the OrgID "
        "of its EV batches, e.g. P-1-12345 (P-1..4 or G-1..7, then 5 digits)",
    )
    sis_program: str = setting(
        "", "REQUIRED: the SIS's code for this sponsor program (the J-1 rows carry it), e.g. RSCH"
    )
    ro_user_id: str = setting(
        "",
        "REQUIRED: SEVIS user id (10 chars) of the program's Responsible Officer: the "
        "userID of its EV batches, and who `--org <program number>` acts as by default",
    )
    aro_user_ids: list[str] = setting(
        [],
        "SEVIS user ids (10 chars each) of the program's Alternate Responsible "
        "Officers, who may also review, hold and close its EV batches",
    )

    def __post_init__(self) -> None:
        if not self.program_number:
            raise ConfigError(
                'program_number is missing: add program_number = "P-1-12345" (the program number '
                "SEVIS shows for the sponsor program)"
            )
        if not PROGRAM_NUMBER_PATTERN.fullmatch(self.program_number):
            raise ConfigError(
                f"program_number = {self.program_number!r} is not a J-1 program number: use it as SEVIS "
                "shows it, P-<1-4>-<5 digits> or G-<1-7>-<5 digits>, e.g. P-1-12345"
            )
        if not self.sis_program.strip():
            raise ConfigError(
                f"sis_program is missing for {self.program_number}: add the SIS's code of this sponsor "
                'program (the value its J-1 rows carry), e.g. sis_program = "RSCH"'
            )
        if not self.ro_user_id:
            raise ConfigError(
                f"ro_user_id is missing for {self.program_number}: add the SEVIS user id of the "
                "program's RO/ARO (10 characters); SEVIS refuses an EV batch signed by anyone else"
            )
        _check_user_ids([("ro_user_id", self.ro_user_id), *(("aro_user_ids", v) for v in self.aro_user_ids)], "RO/ARO")

    def user_ids(self) -> tuple[str, ...]:
        """Who may act for the program: the RO first (the scheduled close signs with it), then the AROs."""
        return (self.ro_user_id, *(u for u in self.aro_user_ids if u != self.ro_user_id))


T = TypeVar("T")


@dataclass(frozen=True)
class _TableList(Generic[T]):
    """How one list-of-tables section (``[[exchange_programs]]``, ``[[schools]]``) is read and checked: the same
    errors, each naming the table (#n and its ``label`` field) and the fix, for every such list."""

    cls: type[T]
    section: str
    label: str  # the field that names a table in errors, e.g. program_number
    unique: tuple[str, ...]  # fields no two tables may share
    needs: str  # what a table holds, for the "not a list of tables" error
    once: str  # the fix when a unique field repeats
    env_example: str  # a JSON example for the environment variable

    def build(self, values: Any, origin: str) -> tuple[T, ...]:
        if values is None:
            return ()
        if not isinstance(values, list) or not all(isinstance(v, (dict, self.cls)) for v in values):
            raise ConfigError(
                f"{origin}: {self.section} must be a list of tables: write one [[{self.section}]] "
                f"(two brackets) per {self.needs}"
            )
        out: list[T] = []
        for i, raw in enumerate(values, 1):
            if isinstance(raw, self.cls):
                out.append(raw)
                continue
            shown = raw.get(self.label)
            where = f"[[{self.section}]] #{i}" + (f" ({shown})" if isinstance(shown, str) and shown else "")
            try:
                out.append(_build_section(self.cls, self.section, raw, {}, origin))
            except ConfigError as exc:
                raise ConfigError(f"{origin}: {where}: {str(exc).removeprefix(origin + ': ')}") from None
        for field_name in self.unique:
            seen: dict[str, int] = {}
            for i, item in enumerate(out, 1):
                value = getattr(item, field_name)
                if value in seen:
                    raise ConfigError(
                        f"{origin}: [[{self.section}]] #{i}: {field_name} {value!r} is also in #{seen[value]}: "
                        f"{self.once}"
                    )
                seen[value] = i
        return tuple(out)

    def from_env(self, env: Mapping[str, str], current: tuple[T, ...]) -> tuple[T, ...]:
        """``SEVISFLOW_<SECTION>`` (a JSON list of tables) replaces the file's list."""
        name = f"{ENV_PREFIX}{self.section.upper()}"
        text = env.get(name)
        if text is None:
            return current
        try:
            values = json.loads(text)
        except ValueError:
            raise ConfigError(f"{name} is not JSON: give a list of objects, e.g. {self.env_example}") from None
        return self.build(values, f"environment variable {name}")


PROGRAM_TABLES = _TableList(
    ExchangeProgram,
    PROGRAMS,
    "program_number",
    ("program_number", "sis_program"),
    "program, with program_number, sis_program and ro_user_id",
    "list each sponsor program once",
    '[{"program_number": "P-1-12345", "sis_program": "RSCH", "ro_user_id": "ROUSER0001"}]',
)


@dataclass(frozen=True)
class MemberSchool:
    """One more F/M school of a many-school deployment (a ``[[schools]]`` table): its own SEVIS OrgID and DSOs.

    Why a list next to [school]: a vendor (or a multi-campus university) runs one pipeline over one SIS for
    several schools; the SIS tells a student's school by ``person.school_code`` (canonical
    ``student.school_code``). A student whose code is empty belongs to [school]; one whose code is a member's
    ``sis_school`` is reported under that member's OrgID, and only that member's DSOs act on its batches.
    """

    org_id: str = setting(
        "",
        "REQUIRED: the member school's SEVIS school code (OrgID), e.g. ABC214F12345000 — "
        "an F/M school code, not a J program number",
    )
    sis_school: str = setting(
        "",
        "REQUIRED: the SIS's code of this school: the value of person.school_code "
        "(canonical student.school_code) on its students' rows, e.g. EAST",
    )
    dso_user_ids: list[str] = setting(
        [],
        "SEVIS user ids (10 chars each) of this school's DSOs: only they may review, "
        "close, hold or release its batches",
    )
    close_dso: str = setting(
        "",
        "SEVIS user id (10 chars) that signs this school's scheduled closes when "
        "school.close_at is set; empty = this school is not closed on schedule",
    )

    def __post_init__(self) -> None:
        if not self.org_id:
            raise ConfigError(
                'org_id is missing: add org_id = "ABC214F12345000" (the member school\'s SEVIS school code)'
            )
        if PROGRAM_NUMBER_PATTERN.fullmatch(self.org_id):
            raise ConfigError(
                f"org_id = {self.org_id!r} is a J-1 program number, not a school code: a program goes under "
                "[[exchange_programs]]; use the member school's F/M code (e.g. ABC214F12345000)"
            )
        if not ORG_ID_PATTERN.fullmatch(self.org_id):
            raise ConfigError(
                f"org_id = {self.org_id!r} is not a SEVIS school code: use it as SEVIS shows it "
                "(3 letters, 214F, 8 digits, e.g. ABC214F12345000)"
            )
        if not self.sis_school.strip():
            raise ConfigError(
                f"sis_school is missing for {self.org_id}: add the value person.school_code has on this "
                'school\'s students in the SIS, e.g. sis_school = "EAST"'
            )
        if self.sis_school != self.sis_school.strip():
            raise ConfigError(
                f"sis_school = {self.sis_school!r} for {self.org_id} has blanks around it: write the code "
                "exactly as person.school_code holds it, without leading or trailing blanks"
            )
        closer = [("close_dso", self.close_dso)] if self.close_dso else []
        _check_user_ids([*(("dso_user_ids", v) for v in self.dso_user_ids), *closer], "DSO")


SCHOOL_TABLES = _TableList(
    MemberSchool,
    SCHOOLS,
    "org_id",
    ("org_id", "sis_school"),
    "member school, with org_id, sis_school and dso_user_ids",
    "list each member school once, each with its own SIS code",
    '[{"org_id": "ABC214F12345000", "sis_school": "EAST", "dso_user_ids": ["EASTDSO001"]}]',
)


def _check_schools(settings: Settings, origin: str) -> None:
    """Member schools against [school] and [[exchange_programs]]: no OrgID twice, in any role."""
    main = settings.school.org_id
    for i, m in enumerate(settings.schools, 1):
        if m.org_id == main:
            raise ConfigError(
                f"{origin}: [[schools]] #{i} ({m.org_id}) is school.org_id too: [school] is the main school "
                "(students with an empty school_code); list only the other schools under [[schools]]"
            )
        if settings.program(m.org_id) is not None:  # pragma: no cover - a program number is refused above
            raise ConfigError(f"{origin}: [[schools]] #{i} ({m.org_id}) is an exchange program's number too")
    if settings.schools and not main:
        raise ConfigError(
            f"{origin}: [[schools]] is set but school.org_id is not: the main school's OrgID is used for "
            'students with an empty school_code; add org_id = "<main school code>" under [school]'
        )


@dataclass(frozen=True)
class Settings:
    """Everything sevisflow can be told. Build it with :func:`load_settings`."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    connector: ConnectorSettings = field(default_factory=ConnectorSettings)
    school: SchoolSettings = field(default_factory=SchoolSettings)
    sevis: SevisSettings = field(default_factory=SevisSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    deadlines: DeadlineSettings = field(default_factory=DeadlineSettings)
    acls: AclSettings = field(default_factory=AclSettings)
    state: StateSettings = field(default_factory=StateSettings)
    exchange_programs: tuple[ExchangeProgram, ...] = ()
    """The J-1 programs the institution sponsors ([[exchange_programs]]); empty = no J program."""
    schools: tuple[MemberSchool, ...] = ()
    """Member F/M schools of a many-school deployment ([[schools]]); empty = [school] is the only school."""

    def replace(self, **sections: Any) -> Settings:
        """A copy with some fields changed, e.g. ``replace(kafka={"bootstrap_servers": b})``;
        ``exchange_programs`` takes the whole list (tables or :class:`ExchangeProgram`)."""
        changed: dict[str, Any] = {}
        for name, values in sections.items():
            if name == PROGRAMS:
                changed[name] = PROGRAM_TABLES.build(list(values), "replace()")
                continue
            if name == SCHOOLS:
                changed[name] = SCHOOL_TABLES.build(list(values), "replace()")
                continue
            current = getattr(self, name)
            changed[name] = dataclasses.replace(current, **dict(values))
        return dataclasses.replace(self, **changed)

    def masked(self) -> dict[str, Any]:
        """The resolved settings as plain data, secrets masked: safe to log or print."""
        out: dict[str, Any] = {}
        for sec in dataclasses.fields(self):
            obj = getattr(self, sec.name)
            if sec.name in LIST_SECTIONS:
                out[sec.name] = [dataclasses.asdict(p) for p in obj]
                continue
            out[sec.name] = {
                f.name: (str(v) if isinstance(v := getattr(obj, f.name), Secret) else v)
                for f in dataclasses.fields(obj)
            }
        return out

    def program(self, org_id: str | None) -> ExchangeProgram | None:
        """The configured exchange program whose program number is ``org_id``, or None (a school code, unknown)."""
        return next((p for p in self.exchange_programs if p.program_number == org_id), None)

    def program_of_sis(self, sis_program: str | None) -> ExchangeProgram | None:
        """The configured exchange program of the SIS's program code ``sis_program``, or None."""
        return next((p for p in self.exchange_programs if p.sis_program == sis_program), None)

    def org_ids(self) -> tuple[str, ...]:
        """Every OrgID sevisflow reports for: the school's F/M code (when set), each member school's ([[schools]]),
        then each program number."""
        school = (self.school.org_id,) if self.school.org_id else ()
        members = tuple(m.org_id for m in self.schools)
        return school + members + tuple(p.program_number for p in self.exchange_programs)

    def member_school(self, org_id: str | None) -> MemberSchool | None:
        """The member school ([[schools]]) whose OrgID is ``org_id``, or None (the main school, a program, unknown)."""
        return next((m for m in self.schools if m.org_id == org_id), None)

    def org_for_school_code(self, code: str | None) -> str | None:
        """The F/M OrgID of a student whose SIS school code (``student.school_code``) is ``code``: empty or None →
        school.org_id (the main school); a member's ``sis_school`` → its org_id; any other code → None."""
        if code is None or not str(code).strip():
            return self.school.org_id
        return next((m.org_id for m in self.schools if m.sis_school == code), None)

    def school_codes(self) -> dict[str, str]:
        """Member schools as the events stage routes them: SIS school code → OrgID."""
        return {m.sis_school: m.org_id for m in self.schools}


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if it exists) and apply SEVISFLOW_* overrides.

    ``path`` None means ``$SEVISFLOW_CONFIG`` or ./sevisflow.toml when present.
    Raises :class:`ConfigError` naming the offending key.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "SEVISFLOW_CONFIG" in env
    file = Path(path if path is not None else env.get("SEVISFLOW_CONFIG", DEFAULT_CONFIG_FILE))
    raw: dict[str, Any] = {}
    if file.is_dir():
        raise ConfigError(
            f"config path {file} is a folder, not a settings file: pass the file itself "
            f"(e.g. --config {file / DEFAULT_CONFIG_FILE})"
        )
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{file}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): save the file as UTF-8"
            ) from None
        except PermissionError:
            raise ConfigError(
                f"{file}: not readable by this user: fix its owner or mode (it may hold "
                "secrets, so 0600 for the user that runs sevisflow)"
            ) from None
    elif explicit:
        raise ConfigError(f"config file {file} does not exist (fix the path or unset SEVISFLOW_CONFIG)")
    settings = settings_from_mapping(raw, env, origin=str(file))
    _check_secret_files(settings, str(file))
    return settings


def settings_from_mapping(
    raw: Mapping[str, Any], env: Mapping[str, str] | None = None, origin: str = "config"
) -> Settings:
    """Build :class:`Settings` from parsed TOML plus environment overrides."""
    env = {} if env is None else env
    sections: dict[str, Any] = {}
    unknown_sections = set(raw) - {f.name for f in dataclasses.fields(Settings)}
    if unknown_sections:
        raise ConfigError(
            f"{origin}: unknown section [{sorted(unknown_sections)[0]}] "
            f"(known: {', '.join(f.name for f in dataclasses.fields(Settings))})"
        )
    for sec in dataclasses.fields(Settings):
        if sec.name == PROGRAMS:
            sections[sec.name] = PROGRAM_TABLES.from_env(env, PROGRAM_TABLES.build(raw.get(PROGRAMS, []), origin))
            continue
        if sec.name == SCHOOLS:
            sections[sec.name] = SCHOOL_TABLES.from_env(env, SCHOOL_TABLES.build(raw.get(SCHOOLS, []), origin))
            continue
        cls = _section_type(sec)
        values = raw.get(sec.name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: {sec.name} must be a table [{sec.name}]")
        sections[sec.name] = _build_section(cls, sec.name, values, env, origin)
    settings = Settings(**sections)
    clash = settings.program(settings.school.org_id)
    if clash is not None:
        raise ConfigError(
            f"{origin}: exchange program {clash.program_number} is school.org_id too: school.org_id is "
            "the school's F/M code (e.g. ABC214F12345000); a program number goes only under "
            "[[exchange_programs]]"
        )
    _check_schools(settings, origin)
    return settings


def _check_secret_files(settings: Settings, origin: str) -> None:
    """A ``file:`` secret must exist and be readable when the config loads, not when a client first needs it."""
    for sec in dataclasses.fields(settings):
        obj = getattr(settings, sec.name)
        if sec.name in LIST_SECTIONS:
            continue  # no secret in a program or a member school
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Secret) and value._value.startswith("file:"):
                path = Path(value._value[5:])
                if not path.is_file():
                    raise ConfigError(
                        f"{origin}: {sec.name}.{f.name} names the secret file {path}, which does not "
                        "exist: create it or fix the path"
                    )
                if not os.access(path, os.R_OK):
                    raise ConfigError(
                        f"{origin}: {sec.name}.{f.name}: secret file {path} is not readable by this "
                        "user: fix its owner or mode (0600 for the user that runs sevisflow)"
                    )


def _section_type(sec: dataclasses.Field[Any]) -> type:
    if sec.name == PROGRAMS:
        return ExchangeProgram
    if sec.name == SCHOOLS:
        return MemberSchool
    hints = typing.get_type_hints(Settings)
    return hints[sec.name]  # type: ignore[no-any-return]


# Keys that were removed because another setting took their place: (section, key) -> the new key.
# Naming the replacement beats "unknown key" for an operator upgrading an old config.
MOVED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("connector", "metrics_port"): ("metrics", "port"),  # the process serves one /metrics for every stage
    ("connector", "metrics.port"): ("metrics", "port"),
}


def _moved(section: str, key: str, where: str) -> ConfigError | None:
    """A ConfigError naming the replacement of a removed key, or None when the key never existed."""
    target = MOVED_KEYS.get((section, key))
    if target is None:
        return None
    new_sec, new_key = target
    return ConfigError(
        f"{where} is no longer a setting: use [{new_sec}] {new_key} instead "
        f"(env {ENV_PREFIX}{new_sec.upper()}_{new_key.upper()})"
    )


def _build_section(cls: type, section: str, values: Mapping[str, Any], env: Mapping[str, str], origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    by_key: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(cls):
        by_key[f.name] = f
        if f.metadata.get("alias"):
            by_key[f.metadata["alias"]] = f
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if section == "connector" and key.startswith("column.mask.hash."):
            # Debezium spells the algorithm and the salt inside the key name: collect such keys into one setting
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: connector.{key}: expected a comma-separated list of column patterns")
            kwargs.setdefault("column_mask_hash", {})[key] = value
            continue
        found = by_key.get(key)
        if found is None:
            moved = _moved(section, key, f"{origin}: {section}.{key}")
            if moved is not None:
                raise moved
            raise ConfigError(
                f"{origin}: unknown key {section}.{key} (known: {', '.join(x.name for x in dataclasses.fields(cls))})"
            )
        kwargs[found.name] = _coerce(value, hints[found.name], f"{section}.{key}", found, from_env=False)
    for f in dataclasses.fields(cls):
        env_key = f"{ENV_PREFIX}{section}_{f.name}".upper()
        if env_key in env:
            kwargs[f.name] = _coerce(env[env_key], hints[f.name], env_key, f, from_env=True)
    known_env = {f"{ENV_PREFIX}{section}_{f.name}".upper() for f in dataclasses.fields(cls)}
    for key in env:
        if key.startswith(f"{ENV_PREFIX}{section.upper()}_") and key not in known_env:
            moved = _moved(section, key[len(ENV_PREFIX) + len(section) + 1 :].lower(), f"environment variable {key}")
            if moved is not None:
                raise moved
            raise ConfigError(f"unknown environment variable {key} (known: {', '.join(sorted(known_env))})")
    return cls(**kwargs)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    """A setting's default value (a fresh one for a list or dict)."""
    return f.default_factory() if callable(f.default_factory) else f.default


def _coerce(value: Any, typ: Any, where: str, f: dataclasses.Field[Any], from_env: bool) -> Any:
    origin = typing.get_origin(typ)
    try:
        if typ is Secret:
            if not isinstance(value, str):
                raise TypeError
            return Secret(value)
        if typ is bool:
            if isinstance(value, bool):
                return value
            if (
                from_env
                and isinstance(value, str)
                and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off")
            ):
                return value.lower() in ("1", "true", "yes", "on")
            raise TypeError
        if typ is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int):
                return value
            if from_env and isinstance(value, str):
                return int(value)
            raise TypeError
        if typ is float:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, (int, float)):
                return float(value)
            if from_env and isinstance(value, str):
                return float(value)
            raise TypeError
        if typ is str:
            if not isinstance(value, str):
                raise TypeError
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{where} = {value!r} is not allowed; use one of: {', '.join(choices)}")
            return value
        if origin is dict:
            if from_env and isinstance(value, str):
                value = json.loads(value)
            item_type = typing.get_args(typ)[1]
            if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, item_type) and not isinstance(v, bool) for k, v in value.items()
            ):
                return dict(value)
            raise TypeError
        if origin is list:
            if from_env and isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise TypeError
    except ConfigError:
        raise
    except (TypeError, ValueError):
        name = getattr(typ, "__name__", str(typ))
        shown = "****" if typ is Secret else repr(value)
        raise ConfigError(f"{where}: expected {name}, got {shown}") from None
    raise ConfigError(f"{where}: unsupported setting type {typ}")  # pragma: no cover


def describe() -> list[tuple[str, str, str]]:
    """(key, default, help) for every setting: used by ``sevisflow config --help-keys``."""
    rows = []
    for sec in dataclasses.fields(Settings):
        cls = _section_type(sec)
        for f in dataclasses.fields(cls):
            default = _default_of(f)
            alias = f.metadata.get("alias")
            key = f"{sec.name}{'[]' if sec.name in LIST_SECTIONS else ''}.{f.name}" + (f" ({alias})" if alias else "")
            rows.append((key, str(default), f.metadata.get("help", "")))
    return rows


def example_toml() -> str:
    """A commented sevisflow.toml with every setting at its default (``sevisflow config --example``)."""
    lines = [
        "# sevisflow settings. Every key is optional except those marked REQUIRED; shown values are the defaults.",
        "# Environment variables SEVISFLOW_<SECTION>_<KEY> override this file.",
        "",
    ]
    for sec in dataclasses.fields(Settings):
        cls = _section_type(sec)
        if sec.name == PROGRAMS:
            lines += _example_programs()
            continue
        if sec.name == SCHOOLS:
            lines += _example_schools()
            continue
        lines.append(f"[{sec.name}]")
        for f in dataclasses.fields(cls):
            default = _default_of(f)
            alias = f.metadata.get("alias")
            lines.append(f"# {f.metadata.get('help', '')}" + (f' (also: "{alias}")' if alias else ""))
            lines.append(f"# {f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


_PROGRAM_EXAMPLE = {
    "program_number": "P-1-12345",
    "sis_program": "RSCH",
    "ro_user_id": "ROUSER0001",
    "aro_user_ids": ["AROUSER001"],
}


def _example_programs() -> list[str]:
    """The commented ``[[exchange_programs]]`` block of the example file (none by default: no J program)."""
    lines = [
        "# J-1 exchange visitor programs the institution sponsors: one [[exchange_programs]] table per program",
        "# number (none = no J program; nothing changes). Each program's EV batches go under its program number,",
        "# never under school.org_id, and are signed by its RO/ARO. Environment: SEVISFLOW_EXCHANGE_PROGRAMS as",
        "# a JSON list of tables replaces them. For example:",
        "# [[exchange_programs]]",
    ]
    for f in dataclasses.fields(ExchangeProgram):
        lines.append(f"#   # {f.metadata.get('help', '')}")
        lines.append(f"#   {f.name} = {_toml_value(_PROGRAM_EXAMPLE[f.name])}")
    return lines + [""]


_SCHOOL_EXAMPLE = {
    "org_id": "ABC214F12345001",
    "sis_school": "EAST",
    "dso_user_ids": ["EASTDSO001"],
    "close_dso": "EASTDSO001",
}


def _example_schools() -> list[str]:
    """The commented ``[[schools]]`` block of the example file (none by default: [school] is the only school)."""
    lines = [
        "# Member F/M schools of a many-school deployment (one SIS, one pipeline, several SEVIS school codes): one",
        "# [[schools]] table per school (none = [school] is the only school; nothing changes). A student whose SIS",
        "# person.school_code is a member's sis_school goes under that member's org_id and only its DSOs act on its",
        "# batches; an empty school_code = [school]. Environment: SEVISFLOW_SCHOOLS as a JSON list of tables",
        "# replaces them. For example:",
        "# [[schools]]",
    ]
    for f in dataclasses.fields(MemberSchool):
        lines.append(f"#   # {f.metadata.get('help', '')}")
        lines.append(f"#   {f.name} = {_toml_value(_SCHOOL_EXAMPLE[f.name])}")
    return lines + [""]


def settings_toml(raw: Mapping[str, Any]) -> str:
    """``{section: {key: value}}`` as a sevisflow.toml that :func:`load_settings` reads back the same
    (the demo and tests write the settings they built; keys are quoted, so ``topic.prefix`` stays one key).
    ``exchange_programs`` is a list of tables, written as ``[[exchange_programs]]`` blocks."""
    lines = []
    for section, values in raw.items():
        tables = values if isinstance(values, list) else [values]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            lines.extend(f"{_toml_value(str(key))} = {_toml_value(value)}" for key, value in table.items())
            lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, Secret):
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
