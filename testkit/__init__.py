"""Made-up data and settings shared by the tests (tests/) and the benchmarks (bench/).

Not part of the product: the wheel ships only the ``sevisflow`` package, and no module under
``sevisflow/`` imports this one (tests/unit/test_test_code_stays_out.py checks both). bench/
imports these builders instead of tests/. No real person anywhere: names, ids and schools are invented.

* :mod:`testkit.settings` — settings pointing at a test stack (per-run topic names, the test school);
* :mod:`testkit.batcher` — SevisEvent / BatchCommand / SevisResult records as the stages write them;
* :mod:`testkit.xml_samples` — closed-batch records, valid against the SEVIS XSDs;
* :mod:`testkit.audit_scenario` — a small audit scenario (two students, two batches) on every topic;
* :mod:`testkit.school` — one student's reference SIS rows and a term of n students.
* :mod:`testkit.chaos` — the chaos harness: every stage its own process under random kill -9
  (``python -m bench.chaos``, tests/integration/test_chaos.py).
"""
