# The README's two commands, `make run` and `make test`. Each does all of its own set-up on a fresh
# machine (Python 3.10+ with pip, nothing else installed), in whatever environment $(PYTHON) is.
PYTHON ?= python3
# torch is installed only when `import torch` fails; CI sets TORCH_SPEC=torch==2.13.0 (a CPU wheel).
TORCH_SPEC ?= torch
PIP := $(PYTHON) -m pip
# console scripts (nbdev-test, ...) of the environment that $(PYTHON) belongs to
BIN := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
# where `make run` writes its executed notebooks and artefacts
OUT ?= outputs/run

.PHONY: run test tables install install-dev torch chromium export clean-nbs

torch:
	@if $(PYTHON) -c 'import torch' 2>/dev/null; then \
		echo "torch $$($(PYTHON) -c 'import torch; print(torch.__version__)') already installed"; \
	else $(PIP) install "$(TORCH_SPEC)"; fi

# `make run` needs the lab extra (papermill, JupyterLab, widgets, kaleido, nbdev); `make test` the dev extra (lab, the
# tsne extra (scikit-learn), pytest, hypothesis, selenium, openpyxl). `pip install -e .` alone is the library.
install: torch
	$(PIP) install -e ".[lab]"

install-dev: torch
	$(PIP) install -e ".[dev]"

# The main job on the embedded synthetic default, through papermill: pretraining (SnipCLR = RVTCLR +
# the snippet term, light preset: 1/4-width ST-GCN), then fine-tuning with the U-fusion decoder and the metric table.
# The 'quick' preset below is sized for 2 CPU cores (a few minutes); on a GPU raise RUN_PARAMS.
PRETRAIN_PARAMS ?= -p size quick -p epochs 3 -p batch_size 16 -p clip_len 100 -p queue_size 1024
LOCALIZE_PARAMS ?= -p size quick -p subset 1 -p protocol finetune -p epochs 10 -p clip_len 100
run: install
	mkdir -p $(OUT)
	$(PYTHON) -m papermill nbs/pretrain.ipynb $(OUT)/pretrain.ipynb $(PRETRAIN_PARAMS) -p out_dir $(OUT)/pretrain
	$(PYTHON) -m papermill nbs/localize.ipynb $(OUT)/localize.ipynb $(LOCALIZE_PARAMS) \
		-p checkpoint $(OUT)/pretrain/last.pt -p out_dir $(OUT)/localize
	@$(PYTHON) -c "import json; r = json.load(open('$(OUT)/localize/metrics.json')); w = max(map(len, r)); print('\n'.join(f'{k:>{w}}: {v}' for k, v in r.items()))"
	@echo "executed notebooks and outputs are in $(OUT)/"

# Chromium and chromedriver for tests/test_browser.py (exported HTML figures in a real browser), with
# apt-get as root or through passwordless sudo; never fatal: without them the browser tests skip.
# `apt-get update` only when the install fails without it (a fresh image has no package lists).
CHROMIUM_PKGS ?= chromium chromium-driver fonts-liberation
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver already installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "NOTE: no chromium/chromedriver and no apt-get to install them: the browser tests will skip"; \
	else \
		if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
		else echo "NOTE: no chromium/chromedriver, and installing them needs root or passwordless sudo: the browser tests will skip"; exit 0; fi; \
		install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CHROMIUM_PKGS)"; \
		echo "installing $(CHROMIUM_PKGS) with apt-get"; \
		$$install || { $$sudo apt-get update -q && $$install; } || \
			echo "NOTE: apt-get could not install $(CHROMIUM_PKGS): the browser tests will skip"; \
	fi

# Notebook tests (slow/gpu cells skip: no --flags), then pytest.
test: install-dev chromium
	$(BIN)/nbdev-test
	$(PYTHON) -m pytest tests/

# The results tables: nbs/table_$(TABLE).ipynb (babel, transfer, ablations, analyses, pkummd) with a preset of snipnb.tables.TABLE_PRESETS ('tiny', 'cpu', 'gpu',
# 'paper'); finished cells (results/table_$(TABLE)/$(PRESET)/cells/) are skipped, so an interrupted table resumes.
TABLE ?= babel
PRESET ?= cpu
TABLE_PARAMS ?=
tables: install
	mkdir -p $(OUT)
	$(PYTHON) -m papermill nbs/table_$(TABLE).ipynb $(OUT)/table_$(TABLE)-$(PRESET).ipynb -p preset $(PRESET) $(TABLE_PARAMS)
	@cat results/table_$(TABLE)/$(PRESET)/*.md

# For developers: regenerate snipnb/ from nbs/ and clean the notebooks before committing.
export:
	$(BIN)/nbdev-export
clean-nbs:
	$(BIN)/nbdev-clean
