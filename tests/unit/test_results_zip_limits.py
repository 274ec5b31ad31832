"""A downloaded results zip is unpacked with caps: entries, per-entry size, total, compression ratio.

Real zip files built here (no mocks). Each refusal is a ``LimitError`` naming the cap and the
``[sevis]`` key to raise; nothing is left half-written in the batch folder.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from sevisflow.core.config import SevisSettings
from sevisflow.sinks.sevis.translog import LimitError, TranslogError
from sevisflow.sinks.sevis.uploader import TRANSLOG_NAME, extract_results

LOG = b'<?xml version="1.0"?><TransactionLog><BatchHeader><BatchID>B</BatchID></BatchHeader></TransactionLog>'
MIB = 1 << 20


def limits(**over) -> SevisSettings:
    base = {
        "max_zip_entries": 10,
        "max_entry_bytes": 4 * MIB,
        "max_unzipped_bytes": 8 * MIB,
        "max_compression_ratio": 50.0,
    }
    base.update(over)
    return SevisSettings(**base)


def zip_of(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_normal_zip_is_unpacked_privately(tmp_path):
    path, _ = extract_results(zip_of({TRANSLOG_NAME: LOG, "N0000000001_I20.pdf": b"%PDF-1.4 x"}), tmp_path, limits())
    assert path == tmp_path / "results" / TRANSLOG_NAME and path.read_bytes() == LOG
    assert (tmp_path / "results" / "N0000000001_I20.pdf").stat().st_mode & 0o777 == 0o600
    # a second download of the same batch replaces results/ in one rename
    extract_results(zip_of({TRANSLOG_NAME: LOG}), tmp_path, limits())
    assert left_over(tmp_path / "results") == [TRANSLOG_NAME] and left_over(tmp_path) == ["results"]


def test_path_traversal_names_land_inside_results(tmp_path):
    (tmp_path / "b").mkdir()
    extract_results(
        zip_of({"../../" + TRANSLOG_NAME: LOG, "/etc/evil.pdf": b"x", "a/../../.hidden": b"y"}),
        tmp_path / "b",
        limits(),
    )
    assert left_over(tmp_path / "b" / "results") == ["evil.pdf", TRANSLOG_NAME]
    assert not (tmp_path / TRANSLOG_NAME).exists() and not (tmp_path / "evil.pdf").exists()


@pytest.mark.parametrize(
    "entries, over, match",
    [
        ({f"f{i}.pdf": b"x" for i in range(11)} | {TRANSLOG_NAME: LOG}, {}, "max_zip_entries"),
        ({TRANSLOG_NAME: LOG, "big.pdf": bytes(5 * MIB)}, {"max_compression_ratio": 1e9}, "max_entry_bytes"),
        (
            {TRANSLOG_NAME: LOG, "a.pdf": bytes(3 * MIB), "b.pdf": bytes(3 * MIB), "c.pdf": bytes(3 * MIB)},
            {"max_compression_ratio": 1e9},
            "max_unzipped_bytes",
        ),
        ({TRANSLOG_NAME: LOG, "bomb.pdf": bytes(3 * MIB)}, {}, "max_compression_ratio"),
    ],
)
def test_caps_refuse_with_the_key_to_raise(tmp_path, entries, over, match):
    with pytest.raises(LimitError, match=match):
        extract_results(zip_of(entries), tmp_path, limits(**over))
    assert left_over(tmp_path) == []  # nothing half-written


def test_a_lying_header_is_caught_while_inflating_and_memory_stays_small(tmp_path):
    """The central directory says 100 bytes; the member inflates to 64 MiB. Streaming stops at the
    declared size (the CRC then fails) without ever holding the member in memory."""
    import tracemalloc

    payload = bytes(64 * MIB)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = comp.compress(payload) + comp.flush()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(TRANSLOG_NAME, LOG)
    good = buf.getvalue()
    # hand-build a second member whose headers claim 100 bytes
    name = b"liar.pdf"
    crc = zlib.crc32(payload)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(raw), 100, len(name), 0) + name + raw
    zf = zipfile.ZipFile(io.BytesIO(good))
    first = zf.infolist()[0]
    cd_first = good[good.index(b"PK\x01\x02") : good.index(b"PK\x05\x06")]
    offset = len(good[: good.index(b"PK\x01\x02")])
    central = (
        cd_first
        + struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(raw), 100, len(name), 0, 0, 0, 0, 0, offset
        )
        + name
    )
    body = good[:offset] + local
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(central), len(body), 0)
    data = body + central + end
    assert first.filename == TRANSLOG_NAME
    tracemalloc.start()
    with pytest.raises((TranslogError, zipfile.BadZipFile)):
        extract_results(data, tmp_path, limits(max_compression_ratio=1e9))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < len(data) + 4 * MIB, peak
    assert left_over(tmp_path) == []


def test_a_refused_log_leaves_no_results_folder(tmp_path):
    def refuse(path):
        raise TranslogError(f"refused {path.name}")

    with pytest.raises(TranslogError, match="refused"):
        extract_results(zip_of({TRANSLOG_NAME: LOG}), tmp_path, limits(), refuse)
    assert left_over(tmp_path) == []


def test_a_zip_without_a_transaction_log_is_refused(tmp_path):
    with pytest.raises(TranslogError, match=TRANSLOG_NAME):
        extract_results(zip_of({"x.pdf": b"x"}), tmp_path, limits())
    assert left_over(tmp_path) == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_zip_entries", 0),
        ("max_entry_bytes", -1),
        ("max_compression_ratio", 0.5),
        ("max_response_bytes", 0),
        ("max_posts", 0),
        ("repost_after_s", -1.0),
    ],
)
def test_caps_are_checked_when_the_config_loads(key, value):
    from sevisflow.core.config import settings_from_mapping
    from sevisflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"sevis.{key}"):
        settings_from_mapping({"school": {"org_id": "ZZZ214F99999000"}, "sevis": {key: value}})


def test_a_directory_of_many_tiny_entries_is_refused_before_zipfile_reads_it(tmp_path):
    data = zip_of({f"{i}": b"" for i in range(3000)} | {TRANSLOG_NAME: LOG}, zipfile.ZIP_STORED)
    with pytest.raises(LimitError, match="lists 3001 files"):
        extract_results(data, tmp_path, limits(max_zip_entries=2000))
    with pytest.raises(TranslogError, match="not a zip"):
        extract_results(b"PK\x03\x04 truncated", tmp_path, limits())
    assert left_over(tmp_path) == []
