# smart-product: the pipeline as a DAG of stages. Each stage reads the files the one before wrote,
# so any stage can be rerun alone (unchanged work is cached by content keys, not file times).
# Variables: DATA=dir (competition layout), CONFIG=auto|configs/{name}.yaml (auto: picked from the data and
# the machine), OUT=dir (outputs; default: here for the demo, runs/{DATA's folder name} for a catalogue),
# IMAGES=off (a text-only run), FOLD=k (features/train: one fold as its own job; a later plain
# `make train` assembles the folds).
#
#   data (DATA, default data/demo) -> folds/folds.csv -> features/{set}/ -> oof/{head}/
#        -> oof/blend/ + submissions/blend.{csv,parquet} + oof/errors/   (eda -> reports/eda/ on the side)
#   the file to upload: OUT/submissions/blend.parquet (the blend's last line names it)
#
PY     ?= .venv/bin/python
PYTHON ?= python3
CONFIG ?= auto
DATA   ?=
RUN     = $(PY) -m smart_product
OUT    ?=
ARGS    = --config $(CONFIG) $(if $(DATA),--data $(DATA)) $(if $(OUT),out_dir=$(abspath $(OUT))) $(if $(IMAGES),images=$(IMAGES))
FOLDARG = $(if $(FOLD),--fold $(FOLD))
# with no DATA the default data is the built-in demo set, made on first use
DEMO    = data/demo/train.parquet
DATADEP = $(if $(DATA),,$(DEMO))

.PHONY: help setup python-check all demo-data validate folds eda features train tune report blend score validate-sub bench bench-images ablation lint test clean errors

all: folds features train eda blend   ## the main job: data -> submission (its last line: the file to upload)

help:                                ## this list: every target and what it does
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | awk -F'\t' '{printf "  make %-13s %s\n", $$1, $$2}'

# setup installs requirements.txt with uv: the same pinned versions as pip, 1.9 against 4.3 min on 2
# cores. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, Python never writes .pyc
# files, and each stage would recompile torch's and transformers' imports (~5 s a process).
# INSTALLER=pip uses pip alone, and pip takes over if uv cannot be installed or fails.
INSTALLER ?= uv
UV_VERSION = 0.13.9
PIPQ    = .venv/bin/pip install -q --disable-pip-version-check --no-cache-dir
UVQ     = .venv/bin/uv pip install -q --no-cache --compile-bytecode --python .venv/bin/python

PYFLOOR = 3.11
setup: python-check .venv/.done      ## .venv with everything in requirements.txt [INSTALLER=uv|pip] [PYTHON=python3.x]
python-check:                        # the pins (numpy 2.4, pandas 3.1, torch 2.15) need Python >= 3.11
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "setup: Python >= $(PYFLOOR) needed by requirements.txt (numpy 2.4, pandas 3.1, torch 2.15); '$(PYTHON)' is $$($(PYTHON) --version 2>&1 | head -1): install 3.11+ and run make setup PYTHON=python3.11"; exit 1; }
.venv/.done: requirements.txt pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	  echo "setup: $$free GiB free here; .venv takes about 7 GiB (the PyPI torch wheels carry CUDA)"; \
	  [ "$$free" -ge 7 ] || echo "setup: WARNING: under 7 GiB free, the install may stop with 'No space left on device'"
	$(PYTHON) -m venv .venv
	@if [ "$(INSTALLER)" = uv ] && $(PIPQ) uv==$(UV_VERSION) && $(UVQ) -r requirements.txt && $(UVQ) --no-deps -e .; \
	then echo "setup: installed with uv $(UV_VERSION)"; \
	else [ "$(INSTALLER)" = uv ] && echo "setup: uv failed; installing with pip"; \
	  $(PIPQ) -r requirements.txt && $(PIPQ) --no-deps -e . && echo "setup: installed with pip"; fi
	touch $@

demo-data: $(DEMO)                   ## built-in demo data (deterministic)
$(DEMO):
	$(RUN) demo-data --config configs/cpu.yaml --out data/demo

validate: $(DATADEP)                 ## check data + every image, print counts
	$(RUN) validate $(ARGS)

folds: $(DATADEP)                    ## -> folds/folds.csv, folds/meta.json (+ near-duplicate audit), folds/dups.parquet
	$(RUN) folds $(ARGS)

eda: $(DATADEP)                      ## -> reports/eda/eda.md, eda.png, images_broken.csv
	$(RUN) eda $(ARGS)

features: folds                      ## -> features/{set}/{train,test}.npy (+ fold{k}/ when fine-tuned); FOLD=k|shared
	$(RUN) features $(ARGS) $(FOLDARG)

train: features                      ## -> oof/{head}/ (OOF + test probabilities), oof/report.md; HEAD=name, FORCE=1, FOLD=k
	$(RUN) train $(ARGS) $(if $(HEAD),--only $(HEAD)) $(if $(FORCE),--force) $(FOLDARG)

tune:                                ## HEAD=name [TRIALS=20]: Optuna -> oof/{head}/optuna.db, best_params.json
	$(RUN) tune $(ARGS) --only $(HEAD) --trials $(or $(TRIALS),20)

report:                              ## OOF report over oof/* (no refitting)
	$(RUN) report $(ARGS)

blend: train                         ## -> oof/blend/, submissions/blend.csv + .parquet, oof/report.md, oof/errors/
	$(RUN) blend $(ARGS)

errors:                              ## [HEAD=name]: where the blend (or a head) errs -> oof/errors/: pairs, sheets, label noise
	$(RUN) errors $(ARGS) $(if $(HEAD),--head $(HEAD))

score:                               ## [SUB=file] [SOLUTION=file]: local score where DATA has test labels (solution.csv)
	$(RUN) score $(ARGS) $(if $(SUB),--sub $(SUB)) $(if $(SOLUTION),--solution $(SOLUTION))

validate-sub:                        ## [SUB=file]: the run's upload file (or SUB) against DATA: every test id once, train categories
	$(RUN) validate-sub $(ARGS) $(if $(SUB),--sub $(SUB))

bench:                               ## DATA=dir [CONFIG=..] [OUT=runs/x] [RESPLIT=grouped|random SEED=n]: pipeline + peer, timings -> OUT/bench/
	$(RUN) bench $(ARGS) $(if $(RESPLIT),bench.resplit=$(RESPLIT) bench.resplit_seed=$(or $(SEED),0))

bench-images: $(DATADEP)             ## image set fine-tune + embed: per-image decoding vs decode-once cache -> OUT/bench/images.md
	$(RUN) bench-images $(ARGS)

ablation:                            ## each component on / off from the OOF files -> OUT/bench/ablation.md (bench runs it)
	$(RUN) ablation $(ARGS)

lint:                                ## ruff: lint and format check of the whole tree (pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test:                                ## the test suite
	$(PY) -m pytest -q

clean:                               ## remove OUT's generated outputs (folds, features, oof, submissions, reports; keeps data/)
	$(RUN) clean $(ARGS)
