# smart-product: the pipeline as a DAG of stages. Each stage reads the files the one before wrote,
# so any stage can be rerun alone. Variables: DATA=dir (competition layout), CONFIG=configs/x.yaml.
#
#   data (DATA, default data/demo) -> folds/folds.csv -> features/{set}/ -> ...
#                                  -> reports/eda/
#
PY     ?= .venv/bin/python
CONFIG ?= configs/cpu.yaml
DATA   ?=
RUN     = $(PY) -m smart_product
ARGS    = --config $(CONFIG) $(if $(DATA),--data $(DATA))
# with no DATA the default data is the built-in demo set, made on first use
DEMO    = data/demo/train.parquet
DATADEP = $(if $(DATA),,$(DEMO))

.PHONY: setup all demo-data validate folds eda features test clean

all: folds eda features              ## the main job

setup: .venv/.done                   ## .venv with everything in requirements.txt
.venv/.done: requirements.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
	.venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo-data: $(DEMO)                   ## built-in demo data (deterministic)
$(DEMO):
	$(RUN) demo-data --config $(CONFIG) --out data/demo

validate: $(DATADEP)                 ## check data + every image, print counts
	$(RUN) validate $(ARGS)

folds: $(DATADEP)                    ## -> folds/folds.csv, folds/meta.json
	$(RUN) folds $(ARGS)

eda: $(DATADEP)                      ## -> reports/eda/eda.md, eda.png, images_broken.csv
	$(RUN) eda $(ARGS)

features: folds                      ## -> features/{set}/{train,test}.npy (+ fold{k}/ when fine-tuned)
	$(RUN) features $(ARGS)

test:                                ## the test suite
	$(PY) -m pytest -q

clean:                               ## remove generated outputs (keeps data/)
	rm -rf folds/*.csv folds/*.json features/*/ reports
