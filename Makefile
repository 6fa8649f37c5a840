# smart-product: the pipeline as a DAG of stages. Each stage reads the files the one before wrote,
# so any stage can be rerun alone (unchanged work is cached by content keys, not file times).
# Variables: DATA=dir (competition layout), CONFIG=configs/x.yaml, OUT=dir (outputs; default here),
# FOLD=k (features/train: one fold as its own job; a later plain `make train` assembles the folds).
#
#   data (DATA, default data/demo) -> folds/folds.csv -> features/{set}/ -> oof/{head}/
#        -> oof/blend/ + submissions/blend.{csv,parquet}          (eda -> reports/eda/ on the side)
#
PY     ?= .venv/bin/python
CONFIG ?= configs/cpu.yaml
DATA   ?=
RUN     = $(PY) -m smart_product
OUT    ?=
ARGS    = --config $(CONFIG) $(if $(DATA),--data $(DATA)) $(if $(OUT),out_dir=$(abspath $(OUT)))
FOLDARG = $(if $(FOLD),--fold $(FOLD))
# with no DATA the default data is the built-in demo set, made on first use
DEMO    = data/demo/train.parquet
DATADEP = $(if $(DATA),,$(DEMO))

.PHONY: help setup all demo-data validate folds eda features train tune report blend score validate-sub bench bench-images ablation lint test clean

all: folds features train blend eda   ## the main job: data -> submission

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

setup: .venv/.done                   ## .venv with everything in requirements.txt [INSTALLER=uv|pip]
.venv/.done: requirements.txt pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	  echo "setup: $$free GiB free here; .venv takes about 7 GiB (the PyPI torch wheels carry CUDA)"; \
	  [ "$$free" -ge 7 ] || echo "setup: WARNING: under 7 GiB free, the install may stop with 'No space left on device'"
	python3 -m venv .venv
	@if [ "$(INSTALLER)" = uv ] && $(PIPQ) uv==$(UV_VERSION) && $(UVQ) -r requirements.txt && $(UVQ) --no-deps -e .; \
	then echo "setup: installed with uv $(UV_VERSION)"; \
	else [ "$(INSTALLER)" = uv ] && echo "setup: uv failed; installing with pip"; \
	  $(PIPQ) -r requirements.txt && $(PIPQ) --no-deps -e . && echo "setup: installed with pip"; fi
	touch $@

demo-data: $(DEMO)                   ## built-in demo data (deterministic)
$(DEMO):
	$(RUN) demo-data --config $(CONFIG) --out data/demo

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

blend: train                         ## -> oof/blend/, submissions/blend.csv + .parquet, oof/report.md
	$(RUN) blend $(ARGS)

score:                               ## SUB=file SOLUTION=file: local leaderboard (weighted/macro F1, accuracy)
	$(RUN) score $(ARGS) --sub $(SUB) --solution $(SOLUTION)

validate-sub:                        ## SUB=file: every test id once, only train categories
	$(RUN) validate-sub $(ARGS) --sub $(SUB)

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

clean:                               ## remove generated outputs (keeps data/)
	rm -rf folds/*.csv folds/*.json features/*/ oof/*/ oof/report.* oof/*.png submissions/*.csv submissions/*.parquet reports
