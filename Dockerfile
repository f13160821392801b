# ortserve images (classic builder compatible: no BuildKit-only syntax).
#   docker build --target runtime -t ortserve:cpu .          CPU, default models copied from ./models (make models)
#   docker build --target gpu -t ortserve:gpu .              CUDA (onnxruntime-gpu), same models
#   docker build --target runtime-built -t ortserve:cpu .    builds the models inside (torch; slow)
# One uvicorn worker per container: scale with replicas, not workers.

ARG PYTHON_IMAGE=python:3.11-slim

# -- serving base: pinned serving dependencies only (no torch, no compilers) ---------------------
FROM ${PYTHON_IMAGE} AS serve-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements/serve.txt requirements/serve.txt
RUN pip install --no-deps -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ortserve
ENV ORTSERVE_MODEL_REPOSITORY=/models \
    ORTSERVE_HOST=0.0.0.0 \
    ORTSERVE_PORT=8000 \
    ORTSERVE_LOG_FORMAT=json
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "service"]

# -- CPU runtime with the model repository from the build context --------------------------------
FROM serve-base AS runtime
COPY models/ /models/
USER 10001

# -- GPU runtime: onnxruntime-gpu with its CUDA/cuDNN wheels (NVIDIA container toolkit on the host)
FROM serve-base AS gpu
COPY requirements/gpu.txt requirements/gpu.txt
RUN pip uninstall -y onnxruntime \
    && pip install --no-deps -r requirements/gpu.txt
COPY models/ /models/
ENV ORTSERVE_PROVIDERS=cuda
USER 10001

# -- optional: build the default models inside the image build (needs the export extra) ----------
FROM ${PYTHON_IMAGE} AS models-build
# hadolint ignore=DL3008 # make is only needed to drive the export commands; any bookworm version works
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN rm -rf models && make models PYTHON=python3

FROM serve-base AS runtime-built
COPY --from=models-build /src/models/ /models/
USER 10001
