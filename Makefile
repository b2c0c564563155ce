# Everything runs inside .venv, which `make setup` creates. The real data set:
#   make train DATA=~/data/simpsons      (the folder holding simpsons_dataset/ and kaggle_simpson_testset/)
PYTHON  ?= python3
VENV    ?= .venv
BIN     ?= $(VENV)/bin
SETUP   ?= setup
DATA    ?= demo/data
OUT     ?= out
# Training options are simpsons train's own defaults (ResNet50, ImageNet weights, 224 px, 12
# epochs: see pipeline/training/config.py); set one of these to change it.
ARCH    ?=
WEIGHTS ?=
EPOCHS  ?=
IMAGE_SIZE ?=
TRAIN_ARGS ?=
UNKNOWN ?=
# `make demo`: built-in cartoon data, EfficientNet-Lite0 fine-tuned from the ImageNet weights its
# package installs (no download), on the CPU, trained at 56 px and evaluated and exported at 64
# px (--eval-scale: random crops show objects larger than the centre crop does), 20 epochs: of
# the settings measured by bench/bench_demo.py (3 seeds), the one that keeps 80 px's quality
# (test macro-F1 0.965 against 0.960, unknown AUROC 0.959 against 0.968, every seed >= 0.95)
# with a model the browser page runs at 64 px (README, "Results"; BENCHMARKS, "Demo").
DEMO    ?= demo
DEMO_SYNTH ?= --per-class 50 --unknown 120
DEMO_TRAIN ?= ARCH=efficientnet_lite0 WEIGHTS=imagenet EPOCHS=20 IMAGE_SIZE=56 TRAIN_ARGS=--eval-scale=1.15

.PHONY: setup test test-fast gpu-check data train evaluate export infer audit web bench demo demo-run summary edge-check clean

$(VENV)/bin/simpsons: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e ".[train,dev,distributed,lite]"
	touch $@

setup: $(VENV)/bin/simpsons

test: $(SETUP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

# Under a minute: everything that needs no trained model, no demo run and no browser.
test-fast: $(SETUP)
	$(BIN)/python -m pytest tests -m "not slow"

# The GPU paths (AMP, channels_last, compile, nccl, resume, export, CUDA inference) on a CUDA
# machine; says so and exits 0 elsewhere. Not part of `make test`.
gpu-check: $(SETUP)
	$(BIN)/python bench/gpu_check.py

data: $(SETUP)
	$(BIN)/simpsons manifest $(DATA) --out $(OUT)/data
	$(BIN)/simpsons audit $(OUT)/data

train: data
	$(BIN)/simpsons train --manifest $(OUT)/data/manifest.parquet --out $(OUT)/run \
		$(if $(ARCH),--arch $(ARCH)) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(TRAIN_ARGS)

evaluate: $(SETUP)
	$(BIN)/simpsons evaluate --checkpoint $(OUT)/run/best.pt --manifest $(OUT)/data/manifest.parquet \
		--split test --out $(OUT)/eval $(if $(UNKNOWN),--unknown $(UNKNOWN))

export: $(SETUP)
	$(BIN)/simpsons export --checkpoint $(OUT)/run/best.pt --out $(OUT)/model.onnx --int8 --fp16 --portable

infer: $(SETUP)
	$(BIN)/simpsons-infer $(DATA)/kaggle_simpson_testset --model $(OUT)/model.int8.onnx \
		-o $(OUT)/predictions.csv --evaluate $(if $(UNKNOWN),--unknown $(UNKNOWN))

# The browser page: index.html + app.js, the service worker that makes it cross-origin isolated
# (sw.js), the portable model and its sidecar, onnxruntime-web's WASM and WebGPU builds, in one
# folder that any static server serves.
WEB     ?= $(OUT)/web
# The portable model `simpsons export` chose for the page (web_model in model.report.json: int8
# where it agrees with fp32 on clear answers), else the fp32 one.
WEB_MODEL ?= $(OUT)/$(or $(shell $(PYTHON) -c 'import json, sys; print(json.load(open(sys.argv[1])).get("web_model", ""))' \
	$(OUT)/model.report.json 2>/dev/null),model.portable.onnx)
ORT_DIST = web/node_modules/onnxruntime-web/dist
web: web/node_modules/.installed
	rm -rf $(WEB) && mkdir -p $(WEB)/ort
	cp web/index.html web/app.js web/model-worker.js web/sw.js $(WEB)/
	cp $(WEB_MODEL) $(WEB)/
	cp $(basename $(WEB_MODEL)).json $(WEB)/model.portable.json
	cp $(ORT_DIST)/ort.wasm.min.mjs $(ORT_DIST)/ort-wasm-simd-threaded.mjs $(ORT_DIST)/ort-wasm-simd-threaded.wasm $(WEB)/ort/
	cp $(ORT_DIST)/ort.webgpu.min.mjs $(ORT_DIST)/ort-wasm-simd-threaded.asyncify.mjs $(ORT_DIST)/ort-wasm-simd-threaded.asyncify.wasm $(WEB)/ort/
	@echo "page in $(WEB): python -m http.server --bind 127.0.0.1 --directory $(WEB) 8000, then open http://127.0.0.1:8000"

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: $(SETUP)
	$(BIN)/python bench/bench_manifest.py
	$(BIN)/python bench/bench_dedupe.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_infer.py

demo: setup demo-run

# Starts from scratch each time, so `make demo` twice in a row gives the same result.
demo-run:
	rm -rf $(DEMO)
	$(BIN)/simpsons synth $(DEMO)/data $(DEMO_SYNTH)
	$(MAKE) --no-print-directory train evaluate export infer audit summary SETUP= DATA=$(DEMO)/data OUT=$(DEMO)/out \
		UNKNOWN=$(DEMO)/data/unknown $(DEMO_TRAIN)

# The audit page with the model's view: likely mislabelled images and misclassified test images.
audit: $(SETUP)
	$(BIN)/simpsons audit $(OUT)/data --checkpoint $(OUT)/run/best.pt

summary:
	@echo
	@echo "Artefacts"
	@echo "  manifest:     $(OUT)/data/manifest.parquet, stats.json, classes_trainval.png, classes_test.png"
	@echo "  training:     $(OUT)/run (best.pt calibrated, last.pt, config.json, history.json; tensorboard --logdir $(OUT)/run)"
	@echo "  evaluation:   $(OUT)/eval (report.md, report.json, confusion.png, reliability.png, predictions.png, predictions.csv)"
	@echo "  ONNX:         $(OUT)/model.onnx, model.int8.onnx, model.fp16.onnx, model.portable.onnx, model.portable.int8.onnx,"
	@echo "                a .json sidecar beside each, model.report.json; make web OUT=$(OUT) puts the page in $(OUT)/web"
	@echo "  inference:    $(OUT)/predictions.csv"
	@echo "  audit page:   $(OUT)/data/audit.html (label_issues.csv beside it)"
	@echo
	@cat $(OUT)/eval/report.md
	@echo
	@echo "Open the data audit: $(OUT)/data/audit.html"

# The runtime alone, as deployed on a small box: a fresh venv with the base install (numpy,
# Pillow, onnxruntime) classifies with a model exported by the full install.
EDGE ?= /tmp/simpsons-edge
edge-check: $(SETUP)
	rm -rf $(EDGE)
	$(BIN)/simpsons synth $(EDGE)/data --classes 3 --per-class 8 --test-per-class 2 --size 96x72
	$(BIN)/simpsons manifest $(EDGE)/data --out $(EDGE)/out --no-plots
	$(BIN)/simpsons train --manifest $(EDGE)/out/manifest.parquet --out $(EDGE)/run --arch resnet18 \
		--weights none --epochs 1 --image-size 32 --workers 0
	$(BIN)/simpsons export --checkpoint $(EDGE)/run/best.pt --out $(EDGE)/model.onnx
	$(PYTHON) -m venv $(EDGE)/venv
	$(EDGE)/venv/bin/pip install --quiet .
	$(EDGE)/venv/bin/python tests/edge_check.py
	cd $(EDGE) && venv/bin/simpsons-infer data/kaggle_simpson_testset --model model.onnx --evaluate -o rows.jsonl
	cd $(EDGE) && ! venv/bin/simpsons train 2> simpsons.err; grep "need the \[train\] extra" $(EDGE)/simpsons.err

clean:
	rm -rf $(OUT) $(DEMO)
