# The bbp-dist-resume image: the library, the `bbp-resume` CLI and the demo pipeline
# (python -m bbp_dist_resume.demo.pipeline), for docker-compose.yml and infra/k8s/.
#
#   docker build -t bbp-dist-resume:0.1.0 .
#
# No secret is baked in: S3 credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the
# encryption key (BBP_ENCRYPTION_KEY) and a Redis password in BBP_COORD_URL come from the
# environment at run time (compose env, Kubernetes Secret).
#
# Every dependency has manylinux wheels for x86_64 and aarch64 on CPython 3.11, so
# neither stage needs a compiler.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# pyproject.toml names README.md as the package's readme: the build needs both.
COPY pyproject.toml README.md ./
COPY bbp_dist_resume ./bbp_dist_resume
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The built wheel with the metrics extra (prometheus-client, for BBP_METRICS_PORT and
# --metrics-port). Dependencies resolve within pyproject.toml's ranges at build time:
# the project keeps no lock file, so two builds may differ in patch releases. (hadolint's
# DL3013 asks for `name==version`: this is a local wheel file, its version is in its name.)
# hadolint ignore=DL3013
RUN wheel="$(ls /wheels/bbp_dist_resume-*.whl)" && pip install "${wheel}[metrics]" \
    && rm -rf /wheels
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a user database.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/bbp bbp
USER 10001:10001
WORKDIR /home/bbp
ENTRYPOINT ["bbp-resume"]
CMD ["--help"]
