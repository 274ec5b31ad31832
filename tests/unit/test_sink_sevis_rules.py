"""Which SEVIS answers prove that an upload was *not* taken: the one rule table of the uploader.

Pure logic over the evidence files' content (``classify``), so every row of the table in the
uploader's docstring is checked here; the same rules run against the real simulator and real
crashes in tests/integration/test_upload.py and test_sink_sevis_crash.py.
"""

from __future__ import annotations

import pytest

from sevisflow.sinks.sevis.uploader import Post, classify, unknown_posts


def posts(*codes: str | None) -> list[Post]:
    return [Post(n, float(n), c) for n, c in enumerate(codes, 1)]


@pytest.mark.parametrize(
    "codes, verdict",
    [
        ((), "post"),  # moved to sending/, crashed before the first POST
        ((None,), "unknown"),  # crashed during the POST / timeout / reset / 5xx
        (("S0000",), "accepted"),
        ((None, "S0000"), "accepted"),
        (("S0001",), "post"),  # upload failed: same BatchID again
        (("S0003",), "post"),
        (("NOT_SENT",), "post"),  # the connection never opened
        (("REFUSED_HTTP",), "post"),  # TLS certificate refused / HTTP 4xx
        (("S0001", "S0001", "NOT_SENT"), "post"),
        (("S0013",), "refused"),  # synchronous refusal, nothing earlier: re-queue
        (("S0002",), "refused"),
        (("S0011",), "refused"),
        (("S0012",), "refused"),
        (("S0010",), "refused"),  # BatchID used before any POST of ours
        (("S0001", "S0010"), "refused"),  # the earlier POST was proven not taken
        (("NOT_SENT", "S0013"), "refused"),
        ((None, "S0010"), "unknown"),  # S0010 after our own unanswered POST: likely ours
        ((None, "S0013"), "unknown"),  # a refusal after an unknown POST proves nothing
        ((None, "S0001"), "unknown"),  # the earlier POST may still have been taken
        (("S0010", "S0010"), "refused"),
        (("weird",), "unknown"),  # an answer code we do not know
        (("S0030",), "unknown"),
    ],
)
def test_classify(codes, verdict):
    assert classify(posts(*codes)) == verdict


def test_operator_decision_refuses_even_an_unknown_outcome_but_never_an_accepted_one():
    assert classify(posts(None, None), operator_requeue=True) == "refused"
    assert classify(posts(None, "S0000"), operator_requeue=True) == "accepted"


def test_unknown_posts_count_only_posts_without_proof():
    assert unknown_posts(posts(None, "S0001", "weird", "S0013", "S0010", "NOT_SENT")) == 3
