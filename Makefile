# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check bench soak install clean

$(BIN)/idp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,check]'
	touch $(BIN)/idp

install: $(BIN)/idp

# `make run PORT=8299` serves there, and with IDP_ISSUER unset the issuer is http://localhost:8299.
# `=`, not `?=`: a PORT in the environment, set for some other tool, does not move it.
PORT = 8000

run: install
	$(BIN)/idp db upgrade
	$(BIN)/idp serve --port $(PORT)

# The SPA relying party's npm packages, exactly as tests/rp/spa/package-lock.json pins them
# (without npm the SPA test skips on a laptop and fails in CI).
tests/rp/spa/node_modules: tests/rp/spa/package-lock.json
	if command -v npm >/dev/null; then cd tests/rp/spa && npm ci --no-audit --no-fund --loglevel=error; fi

test: install tests/rp/spa/node_modules
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint and format (ruff), types (mypy --strict on the core packages: pyproject's [tool.mypy]) and
# the layering (import-linter contracts in pyproject's [tool.importlinter]).
check: install
	$(BIN)/ruff check idp tests bench migrations
	$(BIN)/ruff format --check idp tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

# Benchmark against node-oidc-provider (README "Benchmarks"); e.g. BENCH_ARGS="--duration 5 --workers 1,2"
bench: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# RSS under 10 minutes of mixed traffic, idp then the peer (README "Benchmarks"); e.g. SOAK_ARGS="--backend postgres"
soak: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
