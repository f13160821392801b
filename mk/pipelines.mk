# Pipelines of the default repository (issue 18): a pipeline is a model folder with only a
# config.yaml (task: pipeline), tracked under pipelines/ and copied into $(MODELS) after the models
# it names. The copy lands by rename (a hidden staging folder, then one rename; an older folder
# is moved aside first), so a server polling the repository never reads a half-written folder.
PIPELINES := detect-classify
DEFAULT_MODELS += $(PIPELINES:%=$(MODELS)/%/config.yaml)

.PHONY: models-pipelines clean-pipelines
models-pipelines: $(PIPELINES:%=$(MODELS)/%/config.yaml)

# order-only: the models must be there, but rebuilding them does not touch the pipeline
$(MODELS)/detect-classify/config.yaml: pipelines/detect-classify.yaml \
		| $(MODELS)/nanodet-coco/model.onnx $(MODELS)/mobilenet_v2/model.onnx

$(PIPELINES:%=$(MODELS)/%/config.yaml): $(MODELS)/%/config.yaml: pipelines/%.yaml
	@rm -rf $(MODELS)/.$*.staging $(MODELS)/.$*.old
	mkdir -p $(MODELS)/.$*.staging
	cp $< $(MODELS)/.$*.staging/config.yaml
	if [ -e $(MODELS)/$* ]; then mv $(MODELS)/$* $(MODELS)/.$*.old; fi
	mv $(MODELS)/.$*.staging $(MODELS)/$*
	rm -rf $(MODELS)/.$*.old

# clean-models removes the model folders; a pipeline folder holds config.yaml, not model.onnx
clean-models: clean-pipelines
clean-pipelines:
	rm -rf $(PIPELINES:%=$(MODELS)/%)
