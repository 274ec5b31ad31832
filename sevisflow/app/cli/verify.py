"""``sevisflow verify <BatchID>`` and ``sevisflow verify --all``.

Re-derives archived batch documents from the retained topics with the pipeline's own
pure functions and compares them with the outbox (sha256); ``--all`` also checks every batch
SEVIS answered and the audit ledger (its hash chain, what it sealed, and the head the sinks
anchored on the ledger topic). It does not write the ledger or Kafka (the sinks seal); it records
checkpoints of the batcher re-run after verified batches under ``<outbox_dir>/audit/``
(:mod:`sevisflow.app.audit.checkpoint`), which a later ``verify <BatchID>`` resumes from
(``--from-start``: not). See :mod:`sevisflow.app.audit.verify`
for the checks and docs/AUDIT.md for how to read the output.

Exit codes: 0 everything verified; 1 something failed (a difference, a missing or moved batch, a
broken or re-written ledger) or an error; 3 nothing failed but a check could not run (XSDs not
loadable, a topic not readable, no change topics) and ``--allow-skipped`` was not given.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sevisflow.app.audit.checkpoint import Checkpoint
from sevisflow.app.audit.verify import AllReport, Verdict, VerifyContext, verify_all, verify_batch
from sevisflow.app.cli.common import add_json_flag, print_json, settings_from_args
from sevisflow.core.config import Settings, TopicSettings
from sevisflow.core.errors import SevisflowError
from sevisflow.core.ledger import Ledger

EXIT_VERIFIED, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="prove archived batches by re-deriving them from the log (sha256)",
        description="Re-derive a batch from the retained topics (batcher, renderer and, with a mapping, "
        "normalize + sevis_events) and compare with the archived document; --all checks every "
        "batch and the audit ledger's hash chain.",
    )
    p.add_argument("batch_id", nargs="?", help="the BatchID to verify")
    p.add_argument(
        "--all", action="store_true", help="every batch of the outbox and of the batches topic, plus the ledger chain"
    )
    p.add_argument(
        "--no-seal", action="store_true", help=argparse.SUPPRESS
    )  # verify no longer writes: kept for scripts
    p.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even when a check could not run (XSDs not loadable, a topic not readable); "
        "without it such a run exits 3",
    )
    p.add_argument(
        "--head",
        default=None,
        metavar="HASH",
        help="--all: a ledger head noted earlier; fails when it is no longer in the chain",
    )
    p.add_argument(
        "--anchored-as",
        default=None,
        metavar="PATH",
        help="--all on a copy of the outbox: the path of audit-ledger.jsonl where the sinks wrote it "
        "(the anchors on the ledger topic name it)",
    )
    p.add_argument(
        "--no-sources",
        action="store_true",
        help="skip the change topics (no events/sources checks; much faster on big SIS histories)",
    )
    p.add_argument(
        "--from-start",
        action="store_true",
        help="<BatchID>: re-run the batcher from an empty state, not from a checkpoint an earlier verify "
        "recorded (an auditor's cross-check; --all always does)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="Kafka timeout in seconds")
    add_json_flag(p)
    p.set_defaults(func=cmd_verify)


def load_context(
    settings: Settings,
    with_sources: bool = True,
    timeout_s: float = 30.0,
    until_ms: int | None = None,
    start: Checkpoint | None = None,
) -> VerifyContext:
    """Read the topics and load the XSDs and the mapping (what cannot be loaded is skipped, with the reason).

    ``until_ms``: read each topic only up to the first record written at or after it (one batch's verify).
    ``start``: the batcher re-run resumes from this checkpoint, so the topics only it reads are read from the
    checkpoint's offsets (minus one: the record each offset follows, to check it is still the same); the
    events and commands topics are read from the beginning when the events and sources checks need them."""
    from sevisflow.app.audit.sources import change_topics, list_topics, load_inputs
    from sevisflow.sinks.xml.stage import make_outbox

    t = settings.topics
    starts = None
    if start is not None:
        starts = resume_offsets(start, t, with_history=with_sources and bool(change_topics(settings, timeout_s)))
    inputs = load_inputs(
        settings, with_changes=with_sources, timeout_s=timeout_s, until_ms=until_ms, start_offsets=starts
    )
    skip: dict[str, str] = {}
    requested: set[str] = set()
    existing = set(list_topics(settings, timeout_s))
    report_skips = {
        name: f"topic {topic} does not exist or is not readable"
        for name, topic in (
            ("batches", t.batches),
            ("events", t.events),
            ("commands", t.commands),
            ("results", t.results),
        )
        if topic not in existing
    }
    if t.batches not in existing or t.events not in existing or t.commands not in existing:
        skip["batching"] = "the batches, events or commands topic is not readable: the batcher cannot be re-run"
    schema = None
    try:
        from sevisflow.sinks.xml.xsd import load_schema

        schema = load_schema(settings.sevis.xsd_dir)
    except SevisflowError as exc:
        skip["render"] = f"SEVIS XSDs not loadable: {exc}"
    mapping = None
    tx_topic: str | None = None
    topics: list[str] | None = None
    if with_sources:
        try:
            from sevisflow.processors.normalize.common import mapping_path
            from sevisflow.processors.normalize.mapping import load_mapping
            from sevisflow.processors.normalize.stage import input_topics

            mapping = load_mapping(mapping_path(settings))
            # exactly what the normalize stage subscribes to: the mapped change topics + the transaction topic
            stage_inputs, tx_topic = input_topics(settings, mapping)
            topics = [t for t in stage_inputs if t != tx_topic]
        except Exception as exc:  # noqa: BLE001 - any failure: the check is skipped and says why
            skip["events"] = f"mapping file not loadable ({type(exc).__name__}: {exc})"
        if (
            mapping is not None
            and tx_topic
            and not inputs.transactions
            and any(isinstance(d.value, dict) and isinstance(d.value.get("transaction"), dict) for d in inputs.changes)
        ):
            skip["events"] = (
                f"the transaction topic {tx_topic} is not retained: normalize applies transactions "
                "in the order of its END records, so the events cannot be re-derived without it"
            )
    else:
        skip["events"] = "--no-sources: events not re-derived"
        skip["sources"] = "--no-sources: change topics not read"
        requested |= {"events", "sources"}
    return VerifyContext(
        batches=inputs.batches,
        events=inputs.events,
        commands=inputs.commands,
        results=inputs.results,
        changes=inputs.changes,
        outbox=make_outbox(settings),
        schema=schema,
        mapping=mapping,
        tx_topic=tx_topic,
        transactions=inputs.transactions,
        input_topics=topics,
        skip_reasons=skip,
        timezone=settings.school.timezone,
        ev_programs={p.sis_program: p.program_number for p in settings.exchange_programs},
        schools=settings.school_codes(),
        main_org=settings.school.org_id,
        requested_skips=requested,
        report_skips=report_skips,
        resume=start,
        snapshots=True,
    )


def resume_offsets(start: Checkpoint, topics: TopicSettings, with_history: bool) -> dict[str, dict[int, int]]:
    """Per topic and partition, where ``verify <BatchID>`` starts reading when it resumes from ``start``: the
    checkpoint's offset minus one (the record it follows, to check it is still the same), for the topics only
    the batcher re-run reads. ``with_history`` (the events and sources checks run): the events and commands
    topics are read from the beginning, as those checks look up the batch's events and DSO reports there."""
    only_batcher = [topics.batches, topics.results]
    if not with_history:
        only_batcher += [topics.events, topics.commands]
    return {
        topic: {p: max(0, o - 1) for p, o in start.offsets[topic].items()}
        for topic in only_batcher
        if topic in start.offsets
    }


def verify_one(
    settings: Settings,
    batch_id: str,
    with_sources: bool = True,
    timeout_s: float = 30.0,
    from_start: bool = False,
    write_checkpoint: bool = True,
) -> tuple[Verdict, str]:
    """``verify <BatchID>``: read the log only as far as the batch needs, verify, and say what was read.

    Up to: the close, found from the time the batch's manifest (or ledger line) names, through Kafka's time
    index (:func:`sevisflow.app.audit.sources.batch_read_limit`); what the batcher and normalize applied
    before it was written before it. From: the newest checkpoint of the school at or before the batch's
    start (:mod:`sevisflow.app.audit.checkpoint`), its digest checked and the records it follows still on
    the log; the batcher re-run resumes from it. No usable checkpoint, ``from_start``, or a verdict that is
    not ok from it: the batcher is re-run from an empty state (a checkpoint that is there but altered is
    reported, never used). A verdict that is not ok is checked again against the whole log, so a misdated
    manifest or a far-off clock costs a longer read, never a false failure. A VERIFIED batch leaves a
    checkpoint of the replay right after its close (``write_checkpoint``).
    """
    from sevisflow.app.audit.checkpoint import CheckpointStore, check_anchors
    from sevisflow.app.audit.decode import iso_ms
    from sevisflow.app.audit.sources import SCOPE_SKEW_MS, batch_close, read_limit_of

    t0 = time.perf_counter()
    closed = batch_close(settings, batch_id, timeout_s)
    until = read_limit_of(closed)
    notes: list[str] = []
    store = CheckpointStore(settings.sevis.outbox_dir)

    def took(v: Verdict) -> str:
        return f"in {time.perf_counter() - t0 - v.seconds:.1f} s"

    if closed is not None and until is not None:
        org = closed.value.get("org_id") if isinstance(closed.value, dict) else None
        upto = f"up to {iso_ms(until)} (the batch's close + {SCOPE_SKEW_MS // 1000} s)"
        start = None
        if from_start:
            notes.append("--from-start: no checkpoint used")
        elif isinstance(org, str):
            found = store.find(org, closed.topic, closed.partition, closed.offset)
            if found.problem:
                notes.append(f"checkpoint NOT USED: {found.problem}")
            start = found.checkpoint
            t = settings.topics
            if start is not None and not set(start.offsets) <= {t.events, t.commands, t.results, t.batches}:
                notes.append(f"checkpoint NOT USED: {start.label} was made from other topics than these settings name")
                start = None
        if start is not None:
            ctx = load_context(settings, with_sources, timeout_s, until_ms=until, start=start)
            problem = check_anchors(start, _anchor_hashes(ctx, start))
            if problem:
                notes.append(f"checkpoint NOT USED: {problem}")
            else:
                ctx.org_scope = org
                v = verify_batch(batch_id, ctx)
                if v.ok:
                    notes += _save(store, ctx, batch_id, write_checkpoint)
                    return v, "; ".join(
                        [
                            f"resumed the batcher from the checkpoint after batch {start.label}, read the log "
                            f"from its offsets {upto} {took(v)}",
                            *notes,
                        ]
                    )
                notes.append(f"from the checkpoint after batch {start.label} it did not verify")
        if notes and not from_start:
            notes.append("the batcher was re-run from an empty state")
        ctx = load_context(settings, with_sources, timeout_s, until_ms=until)
        ctx.org_scope = org if isinstance(org, str) else None
        v = verify_batch(batch_id, ctx)
        if v.ok:
            notes += _save(store, ctx, batch_id, write_checkpoint)
            return v, "; ".join([f"read the log {upto} {took(v)}", *notes])
    ctx = load_context(settings, with_sources, timeout_s)
    v = verify_batch(batch_id, ctx)
    if v.ok:
        notes += _save(store, ctx, batch_id, write_checkpoint)
    why = (
        "the archive names no close time found on the log"
        if until is None
        else "reading up to the close did not verify, so the whole log was checked"
    )
    return v, "; ".join([f"read the whole log ({why}) {took(v)}", *notes])


def _anchor_hashes(ctx: VerifyContext, cp: Checkpoint) -> dict[tuple[str, int, int], str | None]:
    """The value sha256 of the records read at the positions the checkpoint's anchors name."""
    want = {(t, p, o - 1) for t, ps in cp.offsets.items() for p, o in ps.items()}
    return {
        (d.topic, d.partition, d.offset): d.value_sha256
        for lst in (ctx.events, ctx.commands, ctx.results, ctx.batches)
        for d in lst
        if (d.topic, d.partition, d.offset) in want
    }


def _save(store: Any, ctx: VerifyContext, batch_id: str, write: bool) -> list[str]:
    """Record the checkpoint of a VERIFIED batch's close (when its batching check ran); what happened, as notes."""
    from sevisflow.app.audit.checkpoint import CheckpointError, encode, sha256

    if not write:
        return []
    closed = ctx.closed_events().get(batch_id)
    org = closed.value.get("org_id") if closed is not None and isinstance(closed.value, dict) else None
    rep = ctx._replays.get(org) if isinstance(org, str) else None
    cp = rep.snapshots.get(batch_id) if rep is not None else None
    if cp is None:
        return ["no checkpoint recorded (the batching check did not run)"]
    try:
        blob = encode(cp)
        old = store.latest().get((cp.org_id, cp.batch_id))
        where = store.root / str((old or {}).get("file"))
        if (
            old is not None
            and old.get("sha256") == sha256(blob)
            and where.is_file()
            and sha256(where.read_bytes()) == old["sha256"]
        ):
            return [f"checkpoint after this batch already recorded ({where})"]
        path, _ = store.write(cp, "verify", blob)
    except (CheckpointError, OSError) as exc:
        return [f"checkpoint not written ({type(exc).__name__}: {exc})"]
    if old is not None and old.get("sha256") != sha256(blob):
        return [
            f"checkpoint written: {path} (the one recorded before for this batch, index line {old.get('seq')}, "
            "differed from the one re-derived now: verify --all reports that as a failure)"
        ]
    return [f"checkpoint written: {path}"]


def write_checkpoints(settings: Settings, ctx: VerifyContext, report: AllReport) -> tuple[list[str], list[str]]:
    """``verify --all``: the checkpoints re-derived from an empty state for the batches that verified, compared
    with those recorded and written (:func:`sevisflow.app.audit.checkpoint.reconcile`). (problems, notes)."""
    from sevisflow.app.audit.checkpoint import CheckpointError, CheckpointStore, reconcile

    good = {
        v.batch_id for v in report.verdicts if v.ok and any(c.name == "batching" and c.status == "ok" for c in v.checks)
    }
    verified = [cp for rep in ctx._replays.values() for bid, cp in rep.snapshots.items() if bid in good]
    try:
        return reconcile(CheckpointStore(settings.sevis.outbox_dir), verified)
    except (CheckpointError, OSError) as exc:
        return [], [f"checkpoints not written ({type(exc).__name__}: {exc})"]


def _print_verdict(v: Verdict) -> None:
    print(f"{v.batch_id}  {'VERIFIED' if v.ok else 'FAILED'}  {v.location or '-'}  ({v.seconds * 1000:.0f} ms)")
    for c in v.checks:
        print(f"  {c.status:<7} {c.name:<9} {c.message}")


def _exit(ok: bool, complete: bool, allow_skipped: bool) -> int:
    if not ok:
        print("verify: FAILED", file=sys.stderr)
        return EXIT_FAILED
    if not complete and not allow_skipped:
        print(
            "verify: INCOMPLETE — a check could not run (see 'skipped'); nothing is proven by it. "
            "Fix what it names, or pass --allow-skipped to accept that",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_VERIFIED


def cmd_verify(args: argparse.Namespace) -> int:
    if bool(args.batch_id) == bool(args.all):
        raise SevisflowError("give a BatchID or --all")
    settings = settings_from_args(args)
    t0 = time.perf_counter()
    if args.batch_id:
        v, read = verify_one(
            settings,
            args.batch_id,
            with_sources=not args.no_sources,
            timeout_s=args.timeout,
            from_start=args.from_start,
        )
        if args.json:
            print_json({**v.to_json(), "read": read})
        else:
            _print_verdict(v)
            print(f"  {read}")
        return _exit(v.ok, v.complete, args.allow_skipped)
    ctx = load_context(settings, with_sources=not args.no_sources, timeout_s=args.timeout)
    from sevisflow.core.ledger import read_anchors

    try:
        anchors = read_anchors(settings.kafka, settings.topics.ledger, args.timeout)
    except SevisflowError as exc:
        anchors = None
        ctx.skip_reasons["anchor"] = str(exc)
    if anchors is None:
        ctx.skip_reasons.setdefault("anchor", f"topic {settings.topics.ledger} does not exist or is not readable")
    load_s = time.perf_counter() - t0
    report = verify_all(
        ctx, Ledger(settings.sevis.outbox_dir), expect_head=args.head, anchors=anchors, anchored_as=args.anchored_as
    )
    report.checkpoint_problems, report.checkpoint_notes = write_checkpoints(settings, ctx, report)
    if args.json:
        print_json(report.to_json())
        return _exit(report.ok, report.complete, args.allow_skipped)
    for v in report.verdicts:
        _print_verdict(v)
    for bid in report.missing:
        print(f"{bid}  MISSING  closed on {settings.topics.batches} but in neither the outbox nor the quarantine")
    for p in report.answered:
        print(f"sevis   FAILED  {p}")
    for p in report.chain_problems:
        print(f"ledger  FAILED  {p}")
    for p in report.checkpoint_problems:
        print(f"checkpoint FAILED  {p}")
    for p in report.checkpoint_notes:
        print(f"checkpoint  {p}")
    for p in report.skipped:
        print(f"skipped {p}")
    n_ok = sum(1 for v in report.verdicts if v.ok)
    per = sum(v.seconds for v in report.verdicts) / max(1, len(report.verdicts))
    if report.anchored is None:
        anchor = "anchor not read"
    elif report.anchored[0] == 0:
        anchor = "nothing anchored yet"
    else:
        anchor = f"anchored line {report.anchored[0]} {report.anchored[1][:16]}… on {settings.topics.ledger}"
        if report.unanchored:
            anchor += (
                f" ({report.unanchored} later line(s) not anchored yet: a sink stopped between sealing and "
                "publishing; it anchors them when it starts)"
            )
    print(
        f"{n_ok} of {len(report.verdicts)} batch(es) verified; {len(report.missing)} missing; "
        f"{len(report.answered)} SEVIS-answered batch(es) out of place; "
        f"ledger {'intact' if not report.chain_problems else 'BROKEN'}, head {report.head}, {anchor}"
        + (f"; {len(report.skipped)} check(s) could not run" if report.skipped else "")
        + f". Read the log in {load_s:.1f} s, {per * 1000:.0f} ms per batch."
    )
    return _exit(report.ok, report.complete, args.allow_skipped)
