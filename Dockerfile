# The gateway's container image: `docker build -t claude-grpc-gateway .` (docs/deploy.md).
#
# Two stages: `build` turns the source into wheels and installs them into a virtualenv; the final
# stage is the same slim Python base with only that virtualenv added (no compiler, no pip, no wheel
# or pip cache), run as a non-root numeric user. It works with a read-only root filesystem: nothing
# is written at run time but stdout/stderr (Python's tempfile may use a /tmp volume).
#
# Build arguments:
#   PYTHON_IMAGE   the base of both stages (default the official slim Python 3.11 image on Debian
#                  bookworm); any image with python3 and its venv module fits.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#                  pip's own settings for the build stage: a package mirror, or a local wheelhouse
#                  for a build with no package index at all (tests/test_container.py builds so).
#   VERSION, REVISION, SOURCE   recorded in the OCI labels (the version, the git commit, the
#                  repository's URL).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# The virtualenv first: it does not depend on the source, so the layer survives source changes.
RUN python3 -m venv /opt/claude-gateway
COPY . /src
# Wheels of the gateway, of the client distribution it speaks through (claude_gateway) and of every
# dependency, then an offline install of exactly those wheels.
RUN /opt/claude-gateway/bin/pip wheel --wheel-dir /wheels /src/client /src \
 && /opt/claude-gateway/bin/pip install --no-index --find-links /wheels claude-grpc-gateway \
 && /opt/claude-gateway/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/claude-gateway /opt/claude-gateway
# The virtualenv's python comes first on PATH, so `python -m server` (the entrypoint, and the command
# the Kubernetes manifests write out) runs the gateway. The bytecode was compiled at install time:
# never try to write more of it on a read-only root. GATEWAY_LISTEN: all interfaces, since a
# container's loopback is its own.
# MALLOC_ARENA_MAX=2: glibc's allocator keeps two heaps, not one per thread that ever allocated (grpc's and the
# gateway's worker threads), so the memory large requests free goes back to the system when the gateway trims
# its heaps after them (docs/operations.md, "Limits and hardening", has the measurement that chose it).
ENV PATH=/opt/claude-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    GATEWAY_LISTEN=0.0.0.0:50051 \
    GATEWAY_LOG_FORMAT=json
# A numeric user and group (the "nonroot" ids of distroless images), so that Kubernetes can verify
# runAsNonRoot without reading /etc/passwd; the user needs no home and owns nothing.
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["python", "-m", "server"]
# Last, so that a new revision rebuilds no layer above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/claude-grpc-gateway
LABEL org.opencontainers.image.title="claude-grpc-gateway" \
      org.opencontainers.image.description="A gRPC gateway to Claude's Messages API: typed, lossless streaming over one ChatService" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
