# foldvision: `make folds train predict EXP=<name>` takes a corpus to OOF scores and a submission.
#
#   EXP=name        configs/<name>.yaml (default: starter, the generic RGB recipe; make demo sets EXP=digits)
#   ARGS="k=v ..."  config overrides, e.g. ARGS="train.epochs=3 model.name=convnext_tiny"
#   DATA=path       shorthand for ARGS+="data.dir=path" (spaces in the path are fine)
#   FOLDS="0 2"     train only these folds
#   GPUS="0 1 2 3"  with make -j 4: fold jobs side by side, each pinned to a free GPU of these
#   LAUNCHER=ray    each fold job (train, predict, ablate) a Ray task (RAY_ADDRESS's cluster, else a local one per
#                   job); LAUNCHER=slurm: a Slurm job through submitit. make -j N runs N at once, as without it.
#                   LAUNCH_ARGS="--gpus-per-task 1 ..." go to `foldvision launch`
#   NPROC=4         each fold on 4 GPUs of this machine at once (torchrun + DDP; global batch and lr × 4),
#                   the folds one after another (not with -j, GPUS or LAUNCHER)
#   NAME=name       the run folder runs/<name> (and W&B group, submission name); default EXP. `make ablate` sets
#                   it per variant, e.g. <exp>--sampler-random
#   GRID="k=a,b"    make ablate: the config values to cross, e.g. GRID="train.sampler=imbalanced,random"
#   MEMBERS="a b"   make ensemble NAME=blend: the runs to blend on their OOF predictions (METHOD=hill_climb|mean|
#                   rank|stack, ROUNDS=50 hill-climbing additions at most)
#   BENCH="--steps 40"  make bench: timed steps per loop (default 20) and --tta-images (default 256)
#   TEST=dir        make predict: a second submission for this folder of new test images (no training; the run's
#                   own test predictions untouched), submissions/<name>--<dir>.csv; SAMPLE=csv its format and ids
#   OUT=dir         make package: the package folder (default packages/<name>)
#   WHEELHOUSE=dir  make wheelhouse: the folder of wheels (default wheelhouse) for PYTHON_VERSION=3.11
#                   PLATFORM=manylinux_2_28_x86_64 (default: this machine's), WITH_TORCH=1 to add torch
#   KERNEL=user/slug COMPETITION=slug PACKAGE_DATASET=user/slug WHEELHOUSE_DATASET=user/slug  make kaggle-notebook
#                   (NOTEBOOK=kaggle its folder, MAX_MINUTES=480 infer's limit)
#
# The stage targets are files: runs/<name>/folds.csv, fold<k>/oof.csv, scores.json, fold<k>/test.csv and
# submissions/<name>.csv. Each user target first resolves the config (`foldvision config` rewrites
# runs/<name>/stage-*.yaml only when what a stage depends on changes: its config sections, or the label table,
# images, sample submission or folds file it reads), then makes its files, so a re-run redoes only what is
# missing or stale: an interrupted `make train` trains only the unfinished folds. No config value is ever
# written into make's syntax: config.mk holds N_FOLDS, a number. No command-line value reaches the shell's
# syntax either: ARGS, DATA, GRID, MEMBERS... go to foldvision through the environment, exactly as written
# (ARGS and MEMBERS are shell-like words: ARGS="data.dir='my corpus' train.lr=1e-4").

SHELL := bash
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

# No EXP: a user's corpus gets the generic RGB recipe (configs/starter.yaml), said in one line; never the digits
# demo's 1-channel 32 px from scratch (make demo names EXP=digits itself). Inner makes get EXP on their command line.
ifeq ($(origin EXP),undefined)
EXP := starter
ifneq ($(filter check folds train score predict cache ablate bench,$(if $(TEST),$(filter-out predict,$(MAKECMDGOALS)),$(MAKECMDGOALS))),)
$(info config: $(or $(CONFIGS),configs)/starter.yaml (no EXP given; EXP=<name> picks configs/<name>.yaml))
endif
endif
NAME ?= $(EXP)
GRID ?=
BENCH ?=
ARGS ?=
DATA ?=
FOLDS ?=
GPUS ?=
NPROC ?= 1
LAUNCHER ?=
LAUNCH_ARGS ?=
MEMBERS ?=
TEST ?=
SAMPLE ?=
OUT ?= packages/$(NAME)
WHEELHOUSE ?= wheelhouse
PYTHON_VERSION ?=
PLATFORM ?=
WITH_TORCH ?=
KERNEL ?=
COMPETITION ?=
PACKAGE_DATASET ?=
WHEELHOUSE_DATASET ?=
NOTEBOOK ?= kaggle
MAX_MINUTES ?= 480
METHOD ?= hill_climb
ROUNDS ?= 50
CONFIGS ?= configs
RUNS ?= runs
SUBMISSIONS ?= submissions
PYTHON ?= python3
VENV := .venv
# PY=other/python runs with an existing environment instead of creating .venv
PY ?= $(VENV)/bin/python
FV := $(PY) -m foldvision
RUN := $(RUNS)/$(NAME)
SUBMISSION := $(SUBMISSIONS)/$(NAME).csv

# ---- the user's values: taken as written, never pasted into a recipe ----------------------------------------
# $(value V) keeps a value as typed (make would otherwise expand `$(x)` in it), and each is exported: a recipe
# hands it on as "$$V", or foldvision reads it with `--from-env V` (shell-like words, foldvision.cli), so
# neither make nor the shell reads a `$`, `;`, backtick, space or `*` in it.
TO_FOLDVISION := ARGS DATA GRID MEMBERS METHOD ROUNDS FOLDS GPUS NPROC LAUNCHER LAUNCH_ARGS BENCH TEST SAMPLE OUT \
	WHEELHOUSE PYTHON_VERSION PLATFORM KERNEL COMPETITION PACKAGE_DATASET WHEELHOUSE_DATASET NOTEBOOK MAX_MINUTES
$(foreach v,$(TO_FOLDVISION) EXP NAME RUNS SUBMISSIONS CONFIGS N_FOLDS,\
  $(if $(filter command environment,$(origin $(v))),$(eval override $(v) := $$(value $(v)))))
export $(TO_FOLDVISION)
# ARGS's words, then DATA (whole, one data.dir) as config overrides
OVERRIDES := --from-env ARGS --from-env-data DATA
# names make pastes into targets and recipes must be plain words: a space splits a target, these characters
# would be read by make or the shell
BAD_CHARS := $$ ` ; & | < > ' " \ * ? [ ] { } ~ ! : % = \# ( )
bad_chars = $(strip $(foreach c,$(BAD_CHARS),$(if $(findstring $(c),$(1)),$(c))))
# FOLDS and N_FOLDS name targets and count folds: digits only
non_digits = $(strip $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,$(subst 7,,\
	$(subst 8,,$(subst 9,,$(1))))))))))))
INSTALLED := $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed)
# what the inner make needs to name the files (the config is already resolved into $(RUN))
PASS = EXP=$(EXP) NAME=$(NAME) RUNS=$(RUNS) SUBMISSIONS=$(SUBMISSIONS)

$(foreach v,EXP NAME RUNS SUBMISSIONS CONFIGS,$(if $(filter-out 1,$(words $($(v)))),\
  $(error $(v)='$($(v))' has spaces: a run or folder name must be one word))\
  $(if $(call bad_chars,$($(v))),\
  $(error $(v)='$($(v))' has $(call bad_chars,$($(v))): use letters, digits and . - _ + / in run and folder names)))

-include $(RUN)/config.mk  # N_FOLDS, a number, written by `foldvision config`
N_FOLDS ?= 5
$(if $(or $(call non_digits,$(N_FOLDS)),$(filter-out 1,$(words $(N_FOLDS)))),\
  $(error N_FOLDS='$(N_FOLDS)': write the number of folds, e.g. N_FOLDS=5))
$(if $(call non_digits,$(FOLDS)),$(error FOLDS='$(FOLDS)': write fold numbers separated by spaces, e.g. FOLDS="0 2"))
ALL_FOLDS := $(shell seq 0 $$(( $(N_FOLDS) - 1 )))
FOLD_OOFS = $(foreach k,$(1),$(RUN)/fold$(k)/oof.csv)
FOLD_TESTS = $(foreach k,$(1),$(RUN)/fold$(k)/test.csv)
RESOLVE = $(FV) config $(EXP) $(OVERRIDES) --configs $(CONFIGS) --run-dir $(RUN)
# NPROC=4: `foldvision train --nproc 4` checks it (a whole number, no more GPUs than visible) and runs torchrun
NPROC_ARG = $(if $(filter-out 1,$(strip $(NPROC))),--nproc "$$NPROC")
# ...with every GPU for one fold: two fold jobs at once (make -j, GPUS, LAUNCHER, ablate -j) would share them
NPROC_ALONE_ERROR = error: NPROC trains one fold at a time on all the GPUs: drop -j, GPUS and LAUNCHER (or NPROC)
NPROC_ALONE = $(if $(NPROC_ARG),$(if $(ONE_JOB),,echo "$(NPROC_ALONE_ERROR)" >&2; exit 2;))
# make's -j, read here alone: MAKEFLAGS holds it as -jN among its first two words (a bare -j counts as 1).
# Exported: each stage process takes its share of the cores by it (foldvision.cli.share_cores)
JOBS = $(or $(patsubst -j%,%,$(filter -j%,$(wordlist 1,2,$(MAKEFLAGS)))),1)
export FOLDVISION_JOBS = $(JOBS)
# one job (no -j, GPUS or LAUNCHER): train-stale / predict-stale run the stale folds in one process
ONE_JOB = $(and $(filter 1,$(JOBS)),$(if $(strip $(GPUS)$(LAUNCHER)),,1))
# The ways to run one fold job are recipe prefixes; make alone decides which jobs run, and how many at once.
# GPUS="0 1 2 3": each fold job takes the first free GPU of these (foldvision.campaign.slot), pinned by
# CUDA_VISIBLE_DEVICES
SLOT = $(if $(strip $(GPUS)),$(FV) slot --gpus "$$GPUS" --)
# LAUNCHER=ray|slurm: the fold job runs as a Ray task or a Slurm job, waited for (foldvision.campaign.launch)
LAUNCH = $(if $(strip $(LAUNCHER)),$(FV) launch "$$LAUNCHER" --label $(NAME)/fold$*$(if \
	$(filter %/test.csv,$@),-predict)$(if $(filter slurm,$(LAUNCHER)), --folder $(RUN)/slurm) --from-env LAUNCH_ARGS --)

# ---- user targets ---------------------------------------------------------------------------------
USER_GOALS := help venv check folds train score predict ablate ensemble package cache leaderboard report bench demo \
	wheelhouse kaggle-notebook test test-fast clean-run label-issues
.PHONY: $(USER_GOALS) train-stale predict-stale
# Several user goals at once (`make -j2 folds train predict`) run one after another: each recurses into a make
# of its own, so side by side two of them would build the same fold files at once (fold 0 trained twice). The
# inner makes name files, not these goals, so the folds inside each stage still fan out over -j.
ifneq ($(word 2,$(filter $(USER_GOALS),$(MAKECMDGOALS))),)
.NOTPARALLEL:
endif

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' Makefile | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 24

venv: $(INSTALLED)  ## create .venv and install foldvision with its pinned stack

check: | $(INSTALLED)  ## validate the corpus: counts, sizes, unreadable files, duplicates, near-duplicates, leaks
	@$(FV) check $(EXP) $(OVERRIDES) --configs $(CONFIGS)

folds: | $(INSTALLED)  ## stage 1: the corpus's stratified K-fold split (made once, reused)
	@$(RESOLVE)
	@$(MAKE) --no-print-directory $(RUN)/folds.csv $(PASS)

# One job (no -j, GPUS or LAUNCHER): the stale folds (`make -q` says which) train, or predict, in one process,
# paying Python's and torch's start-up once; an interrupted run still re-trains only the unfinished folds. Under
# `make -j N`, GPUS or LAUNCHER, each fold is its own job: the fold rules below run side by side, one GPU each.
train: | $(INSTALLED)  ## stage 2+3: train each fold (or FOLDS="0 2"), then the OOF scores; -j N GPUS="0 1" fans out
	@$(RESOLVE)
	@$(MAKE) --no-print-directory train-stale $(PASS)
	@$(MAKE) --no-print-directory $(if $(FOLDS),$(call FOLD_OOFS,$(FOLDS)),$(RUN)/scores.json) $(PASS)

# (inner makes: they read the config.mk that `foldvision config` has just written)
# stale(target pattern with %, folds): the folds whose file `make -q` calls stale: make's own judgement, asked
stale = $$(for k in $(2); do $(MAKE) --no-print-directory -q $(subst %,$$k,$(1)) $(PASS) || echo $$k; done)
# in_one_process(stage, fold file, folds, args): `foldvision <stage> --fold <the stale ones>`, when there are any
in_one_process = stale=$(call stale,$(RUN)/fold%/$(2),$(3)); [ -z "$$stale" ] \
	|| { echo $(FV) $(1) $(RUN) --fold $$stale $(4); $(FV) $(1) $(RUN) --fold $$stale $(4); }
# (a fan-out first fills the decoded-image cache once, instead of every fold job waiting on the first one's)
FAN_OUT = $(if $(NPROC_ARG),echo "$(NPROC_ALONE_ERROR)" >&2; exit 2,$(FV) cache $(RUN))
UNKNOWN_FOLDS = $(filter-out $(ALL_FOLDS),$(FOLDS))
train-stale: $(RUN)/folds.csv
	@$(if $(UNKNOWN_FOLDS),echo "error: FOLDS=$(FOLDS): $(RUN) has folds $(ALL_FOLDS)" >&2; exit 2)
	@$(if $(ONE_JOB),$(call in_one_process,train,oof.csv,$(or $(FOLDS),$(ALL_FOLDS)),$(NPROC_ARG)),$(FAN_OUT))

predict-stale: $(call FOLD_OOFS,$(ALL_FOLDS))
	@$(if $(ONE_JOB),$(call in_one_process,predict,test.csv,$(ALL_FOLDS)),$(FV) cache $(RUN))

label-issues: | $(INSTALLED)  ## runs/<exp>/label_issues.csv: training images whose OOF prediction doubts the label
	@$(RESOLVE)
	@$(MAKE) --no-print-directory $(RUN)/label_issues.csv $(PASS)

cache: | $(INSTALLED)  ## decode the run's train and test images into the cache once (train -j N does it first)
	@$(RESOLVE)
	@$(MAKE) --no-print-directory $(RUN)/folds.csv $(PASS)
	@$(FV) cache $(RUN)

score: | $(INSTALLED)  ## stage 3: OOF scores of a trained experiment
	@$(RESOLVE)
	@$(MAKE) --no-print-directory $(RUN)/scores.json $(PASS)

# TEST=dir: the trained run predicts another folder of images through `foldvision infer` (the package path: no
# config resolved, nothing of the run rewritten), into a second submission
predict: | $(INSTALLED)  ## stage 4: TTA + fold ensemble -> submissions/<exp>.csv; TEST=dir [SAMPLE=csv]: new images
ifneq ($(strip $(TEST)),)
	@$(FV) infer $(RUN) --images "$$TEST" $${SAMPLE:+--sample "$$SAMPLE"} --submissions $(SUBMISSIONS)
else
	@$(RESOLVE)
	@$(MAKE) --no-print-directory predict-stale $(PASS)
	@$(MAKE) --no-print-directory $(SUBMISSION) $(PASS)
endif

# a trained run or a blend as a folder that predicts anywhere offline (`foldvision infer OUT --images DIR ...`)
package: | $(INSTALLED)  ## NAME=<exp or blend> [OUT=packages/<name>]: weights, settings and manifest in one folder
	@$(FV) package $(RUN) "$$OUT"

# what an offline notebook installs foldvision from: its own wheel and its inference dependencies (not the
# `train` extra), pinned by constraints.txt, for the notebook image's Python and platform; torch only on request
wheelhouse: | $(INSTALLED)  ## WHEELHOUSE=dir [PYTHON_VERSION=3.11 PLATFORM=manylinux_2_28_x86_64 WITH_TORCH=1]
	@$(FV) wheelhouse "$$WHEELHOUSE" --python-version "$$PYTHON_VERSION" --platform "$$PLATFORM" \
		--constraints constraints.txt $(if $(strip $(WITH_TORCH)),--with-torch)

kaggle-notebook: | $(INSTALLED)  ## KERNEL= COMPETITION= PACKAGE_DATASET= WHEELHOUSE_DATASET=: notebook + metadata
	@$(FV) kaggle-notebook "$$NOTEBOOK" --kernel "$$KERNEL" --competition "$$COMPETITION" \
		--package-dataset "$$PACKAGE_DATASET" --wheelhouse-dataset "$$WHEELHOUSE_DATASET" --max-minutes "$$MAX_MINUTES"

# ablate: `foldvision ablate --plan` resolves every variant into its own run folder and writes the variant names
# to runs/<exp>/ablation.mk; make then builds the variants as files (so `make -j N ablate` runs variants and
# folds side by side, and a finished variant is skipped), and `--table` compares them
ablate: | $(INSTALLED)  ## GRID="train.sampler=imbalanced,random loss.name=cce,ce": each variant, then a table
	@$(FV) ablate $(EXP) $(OVERRIDES) --grid "$$GRID" --configs $(CONFIGS) --runs $(RUNS) --plan
	@$(MAKE) --no-print-directory ablate-variants EXP=$(EXP) RUNS=$(RUNS) SUBMISSIONS=$(SUBMISSIONS) PY=$(PY)
	@$(FV) ablate $(EXP) $(OVERRIDES) --grid "$$GRID" --configs $(CONFIGS) --runs $(RUNS) \
		--submissions $(SUBMISSIONS) --table

-include $(RUNS)/$(EXP)/ablation.mk  # ABLATION := the variants' run names (checked plain words)
.PHONY: ablate-variants
ablate-variants: $(addprefix ablate-variant/,$(ABLATION))
ablate-variant/%:
	@$(MAKE) --no-print-directory $(RUNS)/$*/folds.csv EXP=$(EXP) NAME=$* RUNS=$(RUNS) PY=$(PY)
	@$(FV) cache $(RUNS)/$*
	@$(MAKE) --no-print-directory $(RUNS)/$*/scores.json $(SUBMISSIONS)/$*.csv EXP=$(EXP) NAME=$* RUNS=$(RUNS) \
		SUBMISSIONS=$(SUBMISSIONS) PY=$(PY)

# a blend takes seconds and its method is not a file make can see: it is made again on every call
ensemble: | $(INSTALLED)  ## NAME=blend MEMBERS="exp_a exp_b" [METHOD=hill_climb|mean|rank|stack]: blend runs on OOF
	@$(if $(strip $(MEMBERS)),,$(error MEMBERS is empty: name the runs to blend, e.g. MEMBERS="exp_a exp_b"))
	@$(FV) ensemble $(RUN) --runs $(RUNS) --members --from-env MEMBERS --method "$$METHOD" --rounds "$$ROUNDS" \
		--out $(SUBMISSION)

leaderboard: | $(INSTALLED)  ## every experiment in runs/, best first, with Public/Private scores when known
	@$(FV) leaderboard $(RUNS) --submissions $(SUBMISSIONS)

# the report renders what the run folder holds and never trains: `make -q` (question mode, runs nothing)
# tells it whether the scores or the submission are stale, and it says so on the page and in one line
report: | $(INSTALLED)  ## runs/<exp>/report.html: config, scores and plots on one page (reads results only)
	@stale=; [ -e $(RUN)/ensemble.json ] || $(MAKE) --no-print-directory -q $(RUN)/scores.json $(PASS) 2>/dev/null \
		|| stale="$$stale scores"; \
	[ ! -e $(SUBMISSION) ] || [ -e $(RUN)/ensemble.json ] \
		|| $(MAKE) --no-print-directory -q $(SUBMISSION) $(PASS) 2>/dev/null || stale="$$stale submission"; \
	$(FV) report $(RUN) --submission $(SUBMISSION) $${stale:+--stale $$stale}

bench: | $(INSTALLED)  ## img/s of EXP on DATA: model-only limit, cached loop cold/warm, textbook loop, TTA vs ttach
	@$(PY) benchmarks/bench.py $(EXP) $(OVERRIDES) --configs $(CONFIGS) --from-env BENCH

demo: | $(INSTALLED) inputs/digits/train.csv  ## the whole pipeline on the built-in digits corpus, scored
	@$(MAKE) --no-print-directory folds train predict EXP=digits
	@echo "submission vs held-back labels:"
	@$(FV) evaluate submissions/digits.csv inputs/digits/test_labels.csv

# the suite installs nothing on the system: the report's render test skips, saying so, without a chromium
# (.ci/run installs Debian's before it runs make test)
# TEST_WORKERS pytest-xdist processes, each test file on one of them (--dist loadfile: a file's tests share its
# fixtures, and the Ray tests their cluster), each torch on one thread: most of the suite waits on one-threaded
# work (make, imports, tiny models), and on 2 cores two workers take about 0.6 of the serial time. TEST_WORKERS=0
# runs the suite in one process.
TEST_WORKERS ?= 2
$(if $(or $(call non_digits,$(TEST_WORKERS)),$(filter-out 1,$(words $(TEST_WORKERS)))),\
  $(error TEST_WORKERS='$(TEST_WORKERS)': write a number of pytest workers, e.g. TEST_WORKERS=2 (0: one process)))
TEST_PARALLEL = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
test: | $(INSTALLED)  ## the whole test suite (what CI runs)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(TEST_PARALLEL) --durations=15 $(PYTEST_ARGS)

test-fast: | $(INSTALLED)  ## the suite without the slow end-to-end tests (make chain, torchrun, launchers)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(TEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

clean-run:  ## delete runs/<exp> and its submission (the corpus folds stay)
	rm -rf $(RUN) $(SUBMISSION)

# ---- files ----------------------------------------------------------------------------------------
# constraints.txt pins every package to the version the suite passed with (a fresh machine gets the same stack)
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $@

inputs/digits/train.csv: | $(INSTALLED)
	$(FV) demo-data inputs/digits

# the other target kinds' demo corpora (configs/digits_tags.yaml, configs/digits_count*.yaml)
inputs/digits_tags/train.csv inputs/digits_count/train.csv: inputs/digits_%/train.csv: | $(INSTALLED)
	$(FV) demo-data inputs/digits_$* --kind $*

$(RUN)/folds.csv: $(RUN)/stage-folds.yaml
	$(FV) folds $(RUN)

# stage-train.yaml also digests train.teacher's files (its or its members' fold models and fold test files,
# ensemble.json): a change in any teacher fold makes every fold of the student stale
$(RUN)/fold%/oof.csv: $(RUN)/stage-train.yaml $(RUN)/folds.csv
	$(NPROC_ALONE) $(LAUNCH) $(SLOT) $(FV) train $(RUN) --fold $* $(NPROC_ARG)

$(RUN)/scores.json: $(call FOLD_OOFS,$(ALL_FOLDS))
	$(FV) score $(RUN)

$(RUN)/label_issues.csv: $(RUN)/scores.json
	$(FV) label-issues $(RUN)

# one fold model's TTA probabilities of the test images; stage-predict.yaml carries the test images' and the
# sample submission's digest, so replacing either re-predicts, and so does a replaced best.pt (another fold's,
# one trained elsewhere). The rule names each fold's file (a static pattern): a best.pt reached only through a
# pattern would be an intermediate file, which make deletes after the run
$(call FOLD_TESTS,$(ALL_FOLDS)): $(RUN)/fold%/test.csv: $(RUN)/stage-predict.yaml $(RUN)/fold%/oof.csv \
		$(RUN)/fold%/best.pt
	$(LAUNCH) $(SLOT) $(FV) predict $(RUN) --fold $*

# best.pt is written by the fold's training, before its oof.csv; a missing one makes predict say what to do
$(RUN)/fold%/best.pt: ;

# the fold ensemble in the sample's format (labels use the decision rule fitted on the OOF predictions)
$(SUBMISSION): $(RUN)/stage-predict.yaml $(call FOLD_TESTS,$(ALL_FOLDS)) $(call FOLD_OOFS,$(ALL_FOLDS))
	$(FV) predict $(RUN) --out $@

# ---- the GPU machine (benchmarks/gpu_check.py) -----------------------------------------------------
# What its image lacks (it has torch, torchvision, timm, numpy, pandas, scikit-learn, OpenCV, PyYAML, rich...), with
# their own missing needs; typing-extensions travels because pydantic needs a newer one than such images hold.
# Ray and wandb stay behind: Ray is too large to carry, and the check trains with tracking off.
GPU_WHEELS := albumentations albucore simsimd stringzilla pydantic pydantic-core annotated-types typing-inspection \
	typing-extensions ttach torchsampler pytorch-optimizer polars polars-runtime-32
WHEELS ?= .whl
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
GPU_CHECK_OUT ?= gpu_check.json
GPU_CHECK_ARGS ?=
# pip matches a manylinux tag exactly: these cover the wheels of the packages above for CPython 3.12 on x86-64
GPU_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,\
	--platform $(p)_x86_64)
.PHONY: gpu-wheels gpu-check

gpu-wheels: | $(INSTALLED)  ## the wheels the GPU machine lacks (CPython 3.12, x86-64), pinned by constraints.txt
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -c constraints.txt -d $(WHEELS) $(GPU_WHEELS)
	@echo "$(WHEELS): $$(ls $(WHEELS) | wc -l) wheels, $$(du -sh $(WHEELS) | cut -f1)"

# there: no network, so pip installs only the carried wheels; foldvision itself runs from the tree (PYTHONPATH=src)
gpu-check:  ## on the GPU machine: install the wheels with pip --no-index, run benchmarks/gpu_check.py
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target $(GPU_SITE) $(WHEELS)/*.whl
	PYTHONPATH=src:$(GPU_SITE) $(GPU_PYTHON) benchmarks/gpu_check.py --keep-going --out $(GPU_CHECK_OUT) \
		$(GPU_CHECK_ARGS)
