"""normalize copies a view before a unit changes it only two levels deep (``copy_for_change``: the view and its
sections), not a deep copy. Property: over random transactions of one student — every section set, changed and
removed, the student re-keyed, deleted and back — a published view never changes afterwards, and the views,
events and dead letters are those the deep copy gives."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sevisflow.processors.normalize import view as view_module
from tests.scenarios import School, base_rows

BASE = base_rows()
ACTIONS = [
    ("u", "person", {"email": "a@example.org"}),
    ("u", "person", {"email": "b@example.org", "phone": "2175550199"}),
    ("u", "person", {"school_id": "S00000008"}),  # a new student key: the view moves
    ("u", "person", {"school_id": "S00000007"}),
    ("u", "program", {"status": "WITHDRAWN"}),
    ("u", "program", {"status": "ACTIVE", "expected_end_date": BASE["program"]["start_date"]}),
    ("u", "immigration", {"visa_type": "J-1"}),
    ("u", "immigration", {"visa_type": "F-1", "sevis_id": None}),
    ("u", "enrollment", {"credit_hours": Decimal("6.0"), "full_time": False}),
    ("u", "finance", {"tuition": 31000}),
    ("toggle", "us", None),
    ("toggle", "foreign", None),
    ("toggle", "enrollment", None),
    ("toggle", "person", None),
]


def _ops(school: School, actions: list[tuple[str, str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The actions that apply to the school as it is now (an update of a deleted row is left out)."""
    ops: list[tuple[str, str, dict[str, Any]]] = []
    present = set(school.rows)
    for kind, name, data in actions:
        if kind == "u" and name in present:
            ops.append(("u", name, data))
        elif kind == "toggle" and name in present:
            ops.append(("d", name, {}))
            present.discard(name)
        elif kind == "toggle":
            ops.append(("c", name, dict(BASE[name])))
            present.add(name)
    return ops


def _run(steps: list[list[tuple[str, str, Any]]]) -> tuple[list[Any], list[tuple[Any, bytes]]]:
    """Everything published over ``steps``, and each published view with its bytes when it was published."""
    school = School()
    said: list[Any] = []
    published: list[tuple[Any, bytes]] = []
    for actions in steps:
        ops = _ops(school, actions)
        if not ops:
            continue
        out = school.tx(*ops)
        for u in out.views:
            published.append((u.view, orjson.dumps(u.view)))
        said.append(
            (
                [(u.student_key, orjson.dumps(u.view), u.unit_id) for u in out.views],
                [(e["kind"], e["student_key"], e["payload_json"]) for e in out.events],
                [(d.code, d.reason) for d in out.dead],
            )
        )
    return said, published


EVERY_KIND = [[a] for a in ACTIONS] + [[ACTIONS[2], ACTIONS[10], ACTIONS[12]], [ACTIONS[13]], [ACTIONS[13], ACTIONS[0]]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3), min_size=1, max_size=12))
@example(EVERY_KIND)
def test_a_published_view_never_changes_and_the_two_level_copy_says_what_a_deep_copy_says(steps):
    said, published = _run(steps)
    if steps is EVERY_KIND:
        assert len(published) >= 12  # nearly every action changes the view (one sets what is there)
    for view, at_publish in published:
        assert orjson.dumps(view) == at_publish
    deep = view_module.copy_for_change
    try:
        view_module.copy_for_change = lambda v: orjson.loads(orjson.dumps(v))
        assert _run(steps)[0] == said
    finally:
        view_module.copy_for_change = deep
