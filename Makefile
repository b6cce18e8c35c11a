# Two commands do everything on a fresh machine (Debian, Python 3.11, root or sudo):
#   make chapter   set up, then train the chapter's autoencoder for 100 epochs: runs/chapter/report.md
#   make test      set up (test extras and Debian's Chromium for the report.html tests too), then run the test suite
#   make compare   set up, then the chapter's figure 12.3: autoencoder, logistic PCA, PCA at 30 (runs/compare)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup chapter test bench compare clean

$(DATA):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# the browser the report.html tests drive (playwright, pointed at it); never a browser downloaded at run time.
# After the data's apt-get, when both are wanted: two at once would contend for dpkg's lock
$(CHROMIUM): | $(DATA)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# torch pinned to the CPU wheel in the same pip call as aelab: a bare `torch` requirement would pull a multi-GB
# CUDA build. pip compiles what it installs, so that processes started with PYTHONDONTWRITEBYTECODE start fast.
INSTALL := $(BIN)/pip install -q torch==2.13.0 -e

$(BIN)/aelab: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(INSTALL) '.[test]'
	touch $@

setup: $(DATA) $(BIN)/aelab

chapter: setup
	if [ -d runs/chapter ]; then $(BIN)/aelab train --resume runs/chapter; else $(BIN)/aelab train --out runs/chapter; fi

compare: setup
	$(BIN)/aelab compare --out runs/compare --overwrite

# aelab with the optional extras the tests exercise (scikit-learn, TensorBoard, MLflow, ONNX, transformers), kept out of
# `make chapter`; one install, which also stands for `make setup`'s
$(VENV)/.test-extras: pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(INSTALL) '.[test,sklearn,tensorboard,mlflow,onnx,hf]'
	touch $(BIN)/aelab $@

# two workers of one torch thread each: most tests start real processes, and two cores serve two of them best;
# aelab's bytecode compiled first, so that those hundreds of processes read it instead of compiling the sources
# each time where PYTHONDONTWRITEBYTECODE is set
test:
	$(MAKE) -j2 $(DATA) $(CHROMIUM) $(VENV)/.test-extras  # apt-get and pip side by side: each waits on its downloads
	$(BIN)/python -m compileall -q src
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

bench: setup
	$(BIN)/python benchmarks/train_speed.py --profile
