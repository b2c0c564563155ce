# Everything runs inside .venv; `make setup` creates it. Override DATA to use the real data set:
#   make train DATA=~/data/simpsons      (the folder holding simpsons_dataset/ and kaggle_simpson_testset/)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= demo/data
OUT    ?= out
ARCH   ?= resnet50
WEIGHTS ?= imagenet
EPOCHS ?= 12
IMAGE_SIZE ?= 224
TRAIN_ARGS ?=

.PHONY: setup test data train evaluate export infer bench demo clean

$(BIN)/simpsons: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $@

setup: $(BIN)/simpsons

test: setup
	$(BIN)/python -m pytest tests

data: setup
	$(BIN)/simpsons manifest $(DATA) --out $(OUT)/data

train: data
	$(BIN)/simpsons train --manifest $(OUT)/data/manifest.parquet --out $(OUT)/run \
		--arch $(ARCH) --weights $(WEIGHTS) --epochs $(EPOCHS) --image-size $(IMAGE_SIZE) $(TRAIN_ARGS)

evaluate: setup
	$(BIN)/simpsons evaluate --checkpoint $(OUT)/run/best.pt --manifest $(OUT)/data/manifest.parquet \
		--split test --out $(OUT)/eval

export: setup
	$(BIN)/simpsons export --checkpoint $(OUT)/run/best.pt --out $(OUT)/model.onnx --int8 --fp16

infer: setup
	$(BIN)/simpsons-infer $(DATA)/kaggle_simpson_testset --model $(OUT)/model.onnx -o $(OUT)/predictions.csv --evaluate

bench: setup
	$(BIN)/python bench/bench_manifest.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_infer.py

demo: setup
	$(BIN)/python -m pipeline.demo --out demo

clean:
	rm -rf $(OUT) demo
