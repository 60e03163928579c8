# 《LLM推理优化实战》 companion labs. Two commands do everything on a fresh machine:
#   make demo   set up, then run the headline demo on the real model
#   make test   set up, then run unit tests, the lab check and every notebook
PY      := .venv/bin/python
STAMP   := .venv/.setup-stamp
STAGE   := scripts/stage.sh
NBVAL   := $(PY) -m pytest --nbval-lax --nbval-current-env -q -p no:cacheprovider
NOTEBOOKS = $(shell find chapters -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)

.PHONY: setup demo test lint unit check-labs nbval doctor notebooks notebook errata jupyter clean bench site site-test

setup: $(STAMP)

$(STAMP): requirements.txt requirements-gpu.txt requirements-sglang-gpu.txt requirements-common.txt requirements-nodeps.txt pyproject.toml scripts/setup.sh \
          requirements-llmcompressor.txt scripts/setup_llmcompressor.sh
	@$(STAGE) setup scripts/setup.sh
	@touch $@

demo: setup
	@$(STAGE) demo $(PY) -m common.demo

test: setup
	@$(STAGE) lint $(MAKE) --no-print-directory lint
	@$(STAGE) "unit tests" $(PY) -m pytest tests -q
	@$(STAGE) "lab check" $(PY) -m labs.check
	@$(STAGE) notebooks $(MAKE) --no-print-directory nbval

lint: setup
	@$(PY) -m ruff check .
	@$(PY) scripts/spellcheck.py

nbval: setup
	@if [ -n "$(NOTEBOOKS)" ]; then $(NBVAL) $(NOTEBOOKS); else echo "no notebooks yet"; fi

bench: setup
	@$(STAGE) bench $(PY) -m common.bench offline --engines common,common-int4,hf,hf-cb,vllm,llama.cpp,sglang --num-prompts 64 --input-len 64:256 \
	  --output-len 64:256 --dtype bfloat16 --json .cache/bench_offline.json --figure figures/bench_offline.png

check-labs: setup
	@$(STAGE) "lab check" $(PY) -m labs.check

lab-%: setup
	@if [ -d labs/lab$* ]; then $(PY) -m pytest -q labs/lab$*; \
	else echo "no lab $* yet; labs: $$(ls -d labs/lab*/ | xargs -n1 basename | tr '\n' ' ')"; exit 2; fi

doctor: setup
	@$(PY) -m common.doctor

# Executing notebooks to commit them: one at a time, each only once the machine is quiet (1-minute load
# below 1.0), figures written into figures/ (LLM_LABS_COMMIT_FIGURES), then ERRATA.md regenerated.
EXECUTE = $(PY) -m common.runinfo wait --below 1.0 && LLM_LABS_COMMIT_FIGURES=1 $(PY) -m jupyter nbconvert \
	  --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=llm-labs

notebooks: setup
	@for nb in $(NOTEBOOKS); do $(STAGE) "execute $$nb" sh -c '$(EXECUTE) "$$0"' "$$nb" || exit 1; done
	@$(PY) -m common.errata

notebook: setup
	@test -n "$(NB)" || { echo "usage: make notebook NB=chapters/chNN-topic/NN-name.ipynb"; exit 2; }
	@$(STAGE) "execute $(NB)" sh -c '$(EXECUTE) "$$0"' "$(NB)"
	@$(PY) -m common.errata

errata: setup
	@$(PY) -m common.errata

# Static HTML of the committed notebooks, ERRATA.md and the lab instructions, with a chapter index (common/site.py)
site: setup
	@$(STAGE) site $(PY) -m common.site --out .cache/site

# The site in headless Chromium (installed here only, never by plain setup): index + one chapter page,
# screenshots in .cache/site-shots, no console errors, every <img> loaded. CI runs it as its own step.
site-test: site
	@scripts/setup_browser.sh
	@$(STAGE) "site test" env SITE_TEST=1 $(PY) -m pytest -q tests/test_site.py

jupyter: setup
	@$(PY) -m jupyter lab --notebook-dir=.

clean:
	rm -rf .venv .cache
