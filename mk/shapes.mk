# Demo models for /detect and /segment (issue 4): trained here on synthetic shapes, seeded, CPU.
TRAIN_SRC := training/__main__.py training/shapes.py training/models.py training/train.py \
	training/common.py export/unet.py $(EXPORT_SRC)

# About 16 minutes together on 2 CPU cores (YOLO 4, U-Net 4, Mask R-CNN 8); numbers in
# docs/detection-segmentation.md.
DEFAULT_MODELS += $(MODELS)/shapes-yolo/model.onnx $(MODELS)/shapes-unet/model.onnx \
	$(MODELS)/shapes-maskrcnn/model.onnx

.PHONY: models-maskrcnn
models-maskrcnn: $(MODELS)/shapes-maskrcnn/model.onnx

$(MODELS)/shapes-yolo/model.onnx: $(TRAIN_SRC) | $(VENV)/.installed
	$(PY) -m training shapes-yolo --out $(MODELS)/shapes-yolo

$(MODELS)/shapes-unet/model.onnx: $(TRAIN_SRC) | $(VENV)/.installed
	$(PY) -m training shapes-unet --out $(MODELS)/shapes-unet

$(MODELS)/shapes-maskrcnn/model.onnx: $(TRAIN_SRC) training/maskrcnn.py | $(VENV)/.installed
	$(PY) -m training shapes-maskrcnn --out $(MODELS)/shapes-maskrcnn
