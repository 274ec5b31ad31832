"""sink-sevis error kinds: one fixed word per failure class, so metrics never carry a message."""

from __future__ import annotations

import pytest

from sevisflow.core.errors import TerminalError, TransientError, UnreachableError
from sevisflow.sinks.sevis.client import Backpressure, CertificateError
from sevisflow.sinks.sevis.translog import LimitError, MismatchError, TranslogError
from sevisflow.sinks.sevis.uploader import error_kind


@pytest.mark.parametrize(
    "exc, kind",
    [
        (CertificateError("refused our TLS client certificate"), "sevis_certificate"),
        (Backpressure("retry after 60s", retry_after_s=60), "sevis_backpressure"),
        (TranslogError("not well-formed"), "sevis_translog"),
        (LimitError("zip entry over max_entry_bytes"), "sevis_limit"),
        (MismatchError("the log names another BatchID"), "sevis_mismatch"),
        (UnreachableError("Kafka refused 3 records"), "kafka"),
        (TransientError("SEVIS answered HTTP 500"), "sevis_http"),
        (TerminalError("SEVIS answered HTTP 404"), "sevis_terminal"),
        (PermissionError("outbox not writable"), "outbox_io"),
        (KeyError("batch_id"), "unexpected"),
    ],
)
def test_error_kind(exc, kind):
    assert error_kind(exc) == kind
