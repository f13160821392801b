# OpenVINO (issue 19): an optional environment, not an image. onnxruntime-openvino installs the same
# `onnxruntime` import package as onnxruntime, so it gets its own venv, like $(GPU_VENV): the serving
# pins (requirements/serve.txt) and requirements/openvino.txt (ONNX Runtime's OpenVINO build, which
# bundles the OpenVINO runtime: no `openvino` package), then the project without its dependencies.
# A model then asks for it in its config.yaml: `runtime: {providers: [{name: openvino}]}`.
OPENVINO_VENV ?= .venv-openvino
OPENVINO_PY := $(OPENVINO_VENV)/bin/python

.PHONY: openvino bench-openvino

$(OPENVINO_VENV)/.installed: pyproject.toml requirements/serve.txt requirements/openvino.txt
	$(PYTHON) -m venv $(OPENVINO_VENV)
	$(OPENVINO_PY) -m pip install -q --upgrade pip
	$(OPENVINO_PY) -m pip install -q --no-deps -r requirements/serve.txt -r requirements/openvino.txt
	$(OPENVINO_PY) -m pip install -q --no-deps -e .
	# fail here, not in a test, when the wheel cannot load its provider on this machine
	$(OPENVINO_PY) -c "import onnxruntime as o, sys; \
		sys.exit(None if 'OpenVINOExecutionProvider' in o.get_available_providers() \
		else f'no OpenVINOExecutionProvider in {o.get_available_providers()}')"
	touch $@

openvino: $(OPENVINO_VENV)/.installed

# tests/e2e/test_openvino.py serves from it: `make test` (and so CI) builds it first
test: $(OPENVINO_VENV)/.installed

# The vision models served with OpenVINO (FP32) against the CPU provider of $(VENV), in alternated
# rounds at concurrency 32, plus each provider in-process at batch 1 and 8 (benchmarks/openvino.py).
OPENVINO_ROUNDS ?= 3
bench-openvino: models $(OPENVINO_VENV)/.installed
	$(PY) -m benchmarks.openvino --models $(MODELS) --openvino-python $(OPENVINO_PY) \
		--rounds $(OPENVINO_ROUNDS) --concurrency 32
