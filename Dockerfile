# sevisflow's container image: the `sevisflow` CLI as entry point, run as a non-root user.
#   docker build -t registry.example.edu/sevisflow:0.1.0 .
#   docker run --rm registry.example.edu/sevisflow:0.1.0 --help
# Configuration, credentials and the SEVIS XSDs are mounted at run time (deploy/k8s/stages.yaml):
# nothing secret is in the image (.dockerignore keeps keys, .env files and local stacks out of the
# build context). Linted by tests/unit/test_image.py (hadolint).

# ---- build: the sevisflow wheel (with the C decoder connectors/postgres/_pgtuple.c and the compiled core) and every
# dependency's wheel, so the runtime stage installs offline and needs no compiler.
FROM python:3.11-slim-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The compiler stays in this stage; pinning Debian package versions would break the build at each
# Debian point release, so they follow bookworm's current ones.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# setup.py builds the C decoder and the processors' compiled core as optional (a failed compile falls
# back to Python); here a missing one is a build error: the wheel must carry both.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/sevisflow-*.whl | grep -q '_pgtuple\..*\.so' \
    && python -m zipfile -l /wheels/sevisflow-*.whl | grep -q 'compiled_core__mypyc\..*\.so'

# ---- runtime
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEVISFLOW_CONFIG=/etc/sevisflow/config/sevisflow.toml
RUN groupadd --system --gid 10001 sevisflow \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sevisflow --create-home \
       --shell /usr/sbin/nologin sevisflow
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/sevisflow-*.whl \
    && python -c "import sevisflow.connectors.postgres._pgtuple, sevisflow.core.serde as s; s.registry().schema('sevisflow.events.SevisEvent')"
WORKDIR /var/lib/sevisflow
USER 10001:10001
# /metrics, /health and /ready: one port per stage, 9409 for `sevisflow run` (sevisflow/core/observability.py)
EXPOSE 9400-9405 9409
ENTRYPOINT ["sevisflow"]
CMD ["--help"]
