# int8 variants of the default vision models (issue 19): static QDQ quantization of the built fp32
# folders, each gated on agreement with fp32 (export/quantize/, docs/export.md). Not defaults:
# `make models-int8` (its MiniLM prerequisite is in mk/export.mk).
QUANTIZE_SRC := $(EXPORT_SRC) $(wildcard export/quantize/*.py)
INT8_BUILD ?= build/int8
# the shapes models calibrate on their own task's images (natural photos are not their domain):
# seeded scenes of training.shapes, seeds far from the training ones
SHAPES_CALIBRATION := $(INT8_BUILD)/shapes-images/.written

models-int8: $(MODELS)/mobilenet_v2-int8/model.onnx \
	$(MODELS)/shapes-yolo-int8/model.onnx $(MODELS)/shapes-unet-int8/model.onnx

$(MODELS)/mobilenet_v2-int8/model.onnx: $(MODELS)/mobilenet_v2/model.onnx $(QUANTIZE_SRC)
	$(PY) -m export quantize --model-dir $(MODELS)/mobilenet_v2 --out $(MODELS)/mobilenet_v2-int8

# Not in models-int8: NanoDet fails its mAP gate with every recipe measured (docs/export.md);
# `make models/nanodet-coco-int8/model.onnx` tries again and writes nothing when it fails.
$(MODELS)/nanodet-coco-int8/model.onnx: $(MODELS)/nanodet-coco/model.onnx $(QUANTIZE_SRC)
	$(PY) -m export quantize --model-dir $(MODELS)/nanodet-coco --out $(MODELS)/nanodet-coco-int8

$(SHAPES_CALIBRATION): training/shapes.py | $(VENV)/.installed
	mkdir -p $(@D)
	$(PY) -c 'from PIL import Image; from training.shapes import generate; \
		[Image.fromarray(generate(10**6 + i).image).save(f"$(@D)/{i:03d}.png") for i in range(300)]'
	touch $@

$(MODELS)/%-int8/model.onnx: $(MODELS)/%/model.onnx $(SHAPES_CALIBRATION) $(QUANTIZE_SRC)
	$(PY) -m export quantize --model-dir $(MODELS)/$* --out $(MODELS)/$*-int8 \
		--calibration $(INT8_BUILD)/shapes-images
