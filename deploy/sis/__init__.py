"""Reference student-information system (SIS): schema, data generator, activity player, loader.

It stands in for a school's real PostgreSQL SIS so the pipeline, its tests and the demo have a
realistic, reproducible source: same seed and `today` give the same rows, byte for byte.
"""
