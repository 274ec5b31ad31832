"""Render + validate time of a full batch (250 CreateStudent + 250 UpdateStudent records).

    python -m bench.sinks [--xsd-dir DIR] [--repeat N] [--json]

Measures, per full batch: building the lxml tree in XSD order and serializing it
(render), validating the bytes against Create-UpdateStudent.xsd (validate), both
together as the sink does it (check_batch), and the atomic write to an outbox
(temp folder, fsync, rename). Also the one-off XSD load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lxml import etree


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s) * 1000, 2),
        "p95_ms": round(s[int(0.95 * (len(s) - 1))] * 1000, 2),
        "min_ms": round(s[0] * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(
        prog="python -m bench.sinks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--xsd-dir", default=os.environ.get("SEVISFLOW_SEVIS_XSD_DIR", str(here.parent / "shared/sevis/xsd"))
    )
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from sevisflow.sinks.outbox import Outbox
    from sevisflow.sinks.xml.render import build_tree, check_batch, serialize
    from sevisflow.sinks.xml.stage import sink_closed_batch
    from sevisflow.sinks.xml.xsd import StudentSchema
    from testkit.xml_samples import sample_batch

    t0 = time.perf_counter()
    schema = StudentSchema(args.xsd_dir)
    load_s = time.perf_counter() - t0
    batch = sample_batch(250, 250)
    check_batch(batch, schema)  # warm-up
    render, validate, both, write = [], [], [], []
    size = 0
    for _ in range(args.repeat):
        t = time.perf_counter()
        root, problems, _, _ = build_tree(batch, schema)
        xml = serialize(root)
        render.append(time.perf_counter() - t)
        assert not problems
        size = len(xml)
        doc = etree.fromstring(xml)
        t = time.perf_counter()
        assert not schema.validate(doc)
        validate.append(time.perf_counter() - t)
        t = time.perf_counter()
        checked = check_batch(batch, schema)
        both.append(time.perf_counter() - t)
        assert checked.ok
        with tempfile.TemporaryDirectory() as tmp:
            ob = Outbox(Path(tmp) / "o", Path(tmp) / "q", "America/Chicago")
            t = time.perf_counter()
            assert sink_closed_batch(batch, schema, ob).status == "written"
            write.append(time.perf_counter() - t)
    result = {
        "batch": "250 CreateStudent + 250 UpdateStudent",
        "bytes": size,
        "repeat": args.repeat,
        "xsd_load_ms": round(load_s * 1000, 1),
        "render": _stats(render),
        "validate": _stats(validate),
        "render_plus_validate": _stats(both),
        "render_validate_write_fsync": _stats(write),
        "python": platform.python_version(),
        "lxml": ".".join(map(str, etree.LXML_VERSION)),
        "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
        "cpus": os.cpu_count(),
    }
    out = here / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sinks.raw").write_text(
        json.dumps({**result, "samples_s": {"render": render, "validate": validate, "both": both, "write": write}})
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"batch: {result['batch']} ({size / 1024:.0f} KiB), {args.repeat} runs; XSD load {result['xsd_load_ms']} ms"
        )
        for k in ("render", "validate", "render_plus_validate", "render_validate_write_fsync"):
            s = result[k]
            print(f"  {k:30s} median {s['median_ms']:8.2f} ms   p95 {s['p95_ms']:8.2f} ms   min {s['min_ms']:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
