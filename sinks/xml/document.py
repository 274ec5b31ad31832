"""Which document a closed batch becomes: F/M students or J-1 exchange visitors, never both.

The batcher keeps a batch per OrgID, and EV events carry the exchange program number as
their OrgID, so a batch's records are either all F/M (a ``SEVISBatchCreateUpdateStudent``)
or all ``EV.*`` (a ``SEVISBatchCreateUpdateEV``). A batch that holds both can only come from
a misconfiguration; SEVIS takes each kind only in its own document, so it is refused as a
whole (a header problem: the sink quarantines it and dead-letters the reason with the fix).
The EV schema is loaded (once) only when an EV batch comes: a school that runs no J
program needs no EV XSD.
"""

from __future__ import annotations

from sevisflow.sinks.xml.render import Checked, ClosedBatch, check_batch
from sevisflow.sinks.xml.render_ev import check_ev_batch, is_ev_batch, mixed_problem
from sevisflow.sinks.xml.xsd import StudentSchema
from sevisflow.sinks.xml.xsd_ev import load_ev_schema


def check_document(batch: ClosedBatch, schema: StudentSchema) -> tuple[Checked, str]:
    """Render and validate ``batch`` with the renderer its records call for; (outcome, XSD version used).

    ``schema`` is the student schema; the EV schema is read from the same ``xsd_dir``."""
    mixed = mixed_problem(batch)
    if mixed is not None:
        return Checked(xml=b"", problems=[mixed]), ""
    if is_ev_batch(batch):
        ev = load_ev_schema(schema.xsd_dir)
        return check_ev_batch(batch, ev), ev.version
    return check_batch(batch, schema), schema.version
