"""``sevisflow sevis-sim``: a SEVIS batch simulator for dry runs (real HTTPS, client certificates).

It validates uploads against the XSD (S0013), enforces unique BatchIDs per school
(S0010) and the 250-record limits, assigns SEVIS IDs to creates, rejects updates
for SEVIS IDs it does not know (S1003) and serves results after a delay (S0030
before). ``--make-certs DIR`` writes a CA, a server and a client certificate
for it and exits; point [sevis] client_cert/client_key/ca_bundle at them.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from sevisflow.app.cli.common import settings_from_args
from sevisflow.core.errors import SevisflowError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sevis-sim", help="run a SEVIS batch simulator (HTTPS + client certificates)", description=__doc__
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="0 = a free port")
    p.add_argument(
        "--cert-dir",
        default=".local/sevis-sim/certs",
        help="its CA/server/client certificates (created there when missing)",
    )
    p.add_argument("--make-certs", metavar="DIR", help="only write the certificates into DIR and exit")
    p.add_argument("--xsd-dir", help="the SEVIS XSD folder (default: [sevis] xsd_dir)")
    p.add_argument("--known-sevis-ids", metavar="FILE", help="SEVIS IDs that exist (any N + 10 digits in the file)")
    p.add_argument("--accept-any-sevis-id", action="store_true", help="accept updates for any well-formed SEVIS ID")
    p.add_argument(
        "--results-delay",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds after an upload before results are ready (S0030 until then)",
    )
    p.add_argument("--org-id", action="append", help="accept only these OrgIDs (S0002 for others); repeatable")
    p.add_argument("--fail-uploads", type=int, default=0, metavar="N", help="make the first N uploads fail")
    p.add_argument("--fail-downloads", type=int, default=0, metavar="N", help="make the first N downloads fail")
    p.add_argument(
        "--fail-mode",
        default="http500",
        choices=(
            "http500",
            "http503",
            "S0001",
            "slow",
            "malformed",
            "drop",
            "slow_accept",
            "drop_after",
            "S0010",
            "S0013",
            "S0031",
        ),
        help="slow_accept / drop_after: the upload is accepted, then answered late / the connection "
        "reset; S0010/S0013 (uploads) and S0031 (downloads): that answer without looking",
    )
    p.add_argument("--slow-seconds", type=float, default=5.0)
    p.add_argument(
        "--registration-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="downloads answer S0031 for S seconds after a batch was accepted (not registered yet)",
    )
    p.add_argument(
        "--registration-delay-downloads",
        type=int,
        default=0,
        metavar="N",
        help="the first N downloads of an accepted batch answer S0031",
    )
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    from sevisflow.sinks.sevis_sim import SevisSimulator, make_certs, read_known_ids

    if args.make_certs:
        c = make_certs(args.make_certs, hosts=tuple({args.host, "127.0.0.1", "localhost"}))
        print(
            f"certificates written to {c.folder}:\n  CA (ca_bundle)      {c.ca_cert}\n"
            f"  client_cert (PEM)   {c.client_cert}\n  client_key          {c.client_key}\n"
            f"  client_cert (.p12)  {c.client_p12}  password: {c.p12_password}\n"
            f"  server              {c.server_cert}"
        )
        return 0
    settings = settings_from_args(args)
    xsd_dir = args.xsd_dir or settings.sevis.xsd_dir
    known: set[str] = set()
    if args.known_sevis_ids:
        if not Path(args.known_sevis_ids).is_file():
            raise SevisflowError(f"--known-sevis-ids: {args.known_sevis_ids} does not exist")
        known = read_known_ids(args.known_sevis_ids)
    sim = SevisSimulator(
        args.cert_dir,
        xsd_dir,
        host=args.host,
        port=args.port,
        known_sevis_ids=known,
        accept_any_sevis_id=args.accept_any_sevis_id,
        results_delay_s=args.results_delay,
        org_ids=args.org_id,
        registration_delay_s=args.registration_delay,
        registration_delay_downloads=args.registration_delay_downloads,
    )
    if args.fail_uploads:
        sim.fail("upload", args.fail_mode, args.fail_uploads, args.slow_seconds)
    if args.fail_downloads:
        sim.fail("download", args.fail_mode, args.fail_downloads, args.slow_seconds)
    try:
        sim.start()
    except OSError as exc:
        raise SevisflowError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); try --port 0") from None
    c = sim.certs
    print(
        f"SEVIS batch simulator on {sim.url} ({len(known)} known SEVIS IDs"
        f"{', any well-formed ID accepted' if args.accept_any_sevis_id else ''}); Ctrl-C stops it.\n"
        f'Point sevisflow at it:\n  [sevis]\n  upload_url = "{sim.upload_url}"\n'
        f'  download_url = "{sim.download_url}"\n  client_cert = "{c.client_cert}"\n'
        f'  client_key = "{c.client_key}"\n  ca_bundle = "{c.ca_cert}"\n'
        f'Control: POST {sim.url}/_sim/control {{"fail": {{"op": "upload", "mode": "S0001"}}}}; '
        f"GET {sim.url}/_sim/state",
        flush=True,
    )
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0
