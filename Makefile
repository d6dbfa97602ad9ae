# Two commands do all set-up: `make run` (installs, then trains the default job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# albumentations otherwise checks the network for updates on import.
export NO_ALBUMENTATIONS_UPDATE := 1
# Extra Hydra overrides for `make run`, e.g. make run ARGS="dataset=yale dataset.root=/data/yalefaces model=face"
ARGS ?=

# Parallel jobs for the paper sweeps (joblib launcher); torch threads are split among them.
# model=emotion2face trains the Emotion CNN (the same network and numbers as model=emotion, same
# seed) and then Emotion2Face on its base, so the paper's four models take three jobs per fold;
# the recommended hybrid_standardised is the fourth, for the README's comparison.
JOBS ?= 2
SWEEP := -m hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) trainer.enable_progress_bar=false \
	model=face,emotion2face,hybrid,hybrid_standardised 'fold=range(10)'

.PHONY: install run test preview ui clean paper-yale paper-jaffe report bench

install: $(VENV)/.installed

# torch 2.13.0 goes in first and on its own: it is the local CPU build, and the project's
# torch range admits it, so nothing afterwards asks for a CUDA wheel.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/python -m anonemo.train $(ARGS)

# One pytest worker per core; a test file stays on one worker, so its module fixtures are built once.
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

preview: install
	$(BIN)/python -m anonemo.data.preview $(ARGS)

# The paper's tables: 4 models (Face, Emotion with Emotion2Face, Hybrid) and the recommended Hybrid x 10 folds. Point at
# the data with ANONEMO_YALE_ROOT / ANONEMO_JAFFE_ROOT (or ARGS="dataset.root=..."); then
# `make report`.
paper-yale: install
	$(BIN)/python -m anonemo.train $(SWEEP) experiment=paper_yale $(ARGS)

paper-jaffe: install
	$(BIN)/python -m anonemo.train $(SWEEP) experiment=paper_jaffe $(ARGS)

bench: install  # throughput against a plain PyTorch loop, fold 0 of each model on Yale, hybrid_standardised per round (docs/performance.md)
	$(BIN)/python -m benchmarks dataset=yale $(ARGS)

report: install
	$(BIN)/python -m anonemo.report $(ARGS)

# Without MLflow's server-side job runner (GenAI jobs, 8 more processes), which anonemo never uses.
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db \
		--default-artifact-root $(CURDIR)/outputs/mlartifacts

clean:
	rm -rf outputs/cache outputs/runs outputs/multirun
