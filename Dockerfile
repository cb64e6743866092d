# dpnbids BIDS App image.
#
#   docker build -t dpn-bids:latest .
#   docker run --rm -v /data:/data:ro -v /out:/out dpn-bids:latest /data /out participant
#   docker run --rm --gpus all -v /data:/data:ro -v /out:/out dpn-bids:latest /data /out group
#
# Build arguments (see docs/container.md):
#   BASE_IMAGE           Debian bookworm image with Python 3.11 (python:3.11-slim-bookworm);
#                        the build stage and the runtime stage must use the same one
#   TF_VARIANT           and-cuda (default: TensorFlow with its CUDA libraries from PyPI, so
#                        `docker run --gpus all` trains on the GPU and CPU-only hosts still
#                        work) or cpu (tensorflow-cpu, about 3 GB smaller)
#   TF_VERSION           TensorFlow release, the one in requirements.lock
#   BIDS_VALIDATOR_VERSION  bids-validator-deno release that checks inputs at run time
#   VERSION              image version label (default: dpnbids.__version__ of this tree)
#   IMAGE_TAG            what GeneratedBy[].Container.Tag records (DPNBIDS_CONTAINER)
#   TEMPLATE_FETCH       TemplateFlow spaces downloaded at build time (space separated)
#   TEMPLATEFLOW_STRICT  1 (default): fail the build when they cannot be downloaded;
#                        0: build without them (MNI152NLin2009aSym is always seeded offline)

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${BASE_IMAGE} AS build

ARG TF_VARIANT=and-cuda
ARG TF_VERSION=2.21.0
ARG BIDS_VALIDATOR_VERSION=3.0.2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY dpnbids ./dpnbids
COPY docker/wheel_requirements.py ./docker/

# A wheel of this tree, its dependencies at the locked versions (TensorFlow swapped
# for the requested build) plus the BIDS validator, then the wheel itself; the
# check command fails the build when a dependency of dpnbids is missing.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip wheel --no-deps --wheel-dir /src/dist . \
    && case "${TF_VARIANT}" in \
         and-cuda) tf="tensorflow[and-cuda]==${TF_VERSION}" ;; \
         cpu) tf="tensorflow-cpu==${TF_VERSION}" ;; \
         *) echo "TF_VARIANT must be 'and-cuda' or 'cpu', got '${TF_VARIANT}'" >&2; exit 1 ;; \
       esac \
    && /opt/venv/bin/python docker/wheel_requirements.py /src/dist/dpnbids-*.whl --tf "${tf}" \
         --lock requirements.lock --out /tmp/requirements.txt --constraints /tmp/constraints.txt \
    && /opt/venv/bin/python -m pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
         "bids-validator-deno==${BIDS_VALIDATOR_VERSION}" \
    && /opt/venv/bin/python -m pip install --no-deps /src/dist/dpnbids-*.whl \
    && /opt/venv/bin/python docker/wheel_requirements.py --check --tf "${tf}" \
    && /opt/venv/bin/python -m pip freeze > /opt/venv/pip-freeze.txt

# -------------------------------------------------------------- runtime stage
FROM ${BASE_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG IMAGE_TAG=dpn-bids:${VERSION}
ARG TEMPLATE_FETCH=MNI152NLin2009cAsym
ARG TEMPLATEFLOW_STRICT=1

LABEL org.opencontainers.image.title="dpnbids" \
      org.opencontainers.image.description="BIDS App: predict response to IV lidocaine in painful diabetic neuropathy from resting-state fMRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dpnbids/dpnbids"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=build /opt/venv /opt/venv

# Every cache a run touches lives under /tmp, so `--read-only --tmpfs /tmp` works and
# any uid (`-u $(id -u)`) can write; HOME is world-writable for tools that insist on it.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/dpnbids \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    DPNBIDS_CACHE=/tmp/dpnbids-cache \
    DPNBIDS_CONTAINER=${IMAGE_TAG} \
    MPLCONFIGDIR=/tmp/dpnbids-cache/matplotlib \
    KERAS_HOME=/tmp/dpnbids-cache/keras \
    XDG_CACHE_HOME=/tmp/dpnbids-cache \
    NIPYPE_CONFIG_DIR=/tmp/dpnbids-cache/nipype \
    NIPYPE_NO_ET=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    LANG=C.UTF-8

COPY docker/prefetch_templates.py /opt/dpnbids/prefetch_templates.py
# TEMPLATE_FETCH is a space-separated list: word splitting is intended.
# hadolint ignore=SC2086
RUN useradd --create-home --home-dir /home/dpnbids --uid 1000 --shell /bin/bash dpnbids \
    && chmod 1777 /home/dpnbids \
    && strict="" && if [ "${TEMPLATEFLOW_STRICT}" = 1 ]; then strict="--strict"; fi \
    && /opt/venv/bin/python /opt/dpnbids/prefetch_templates.py --home /opt/templateflow \
         --resolutions 1 2 --seed-resolutions 1 2 3 4 --fetch ${TEMPLATE_FETCH} ${strict} \
    && chmod -R a+rX /opt/templateflow \
    && rm -rf /tmp/* \
    && dpnbids --version

# uid 1000 is the user "dpnbids" created above (numeric, so hosts need not know the name)
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/venv/bin/dpnbids"]
CMD ["--help"]
