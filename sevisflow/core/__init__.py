"""The shared core: configuration, errors, the Kafka wrapper, serializers, topics, logs, metrics, state.

Everything above (the stages in ``sevisflow.connectors``, ``sevisflow.processors``, ``sevisflow.sinks``
and the application in ``sevisflow.app``) imports from here; this package imports nothing above it.
"""

from pathlib import Path

PACKAGE_ROOT = Path(__file__).parent.parent
"""The installed ``sevisflow`` package folder: schemas/, deploy/ (topics.toml, the reference SIS's SQL and
mapping) are read from beneath it. Not resolved: in a checkout, sevisflow/schemas and friends are links to
the repository's top-level folders, and the same relative paths work in an installed wheel."""
