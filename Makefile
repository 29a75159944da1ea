# The two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# make test runs the tests in this many processes (pytest-xdist); 0 = in make's own one. Three
# on two cores: the tests wait (group joins, consumers) about a third of the time.
TEST_WORKERS ?= 3

.PHONY: run test install lint typecheck unit clean docs browser softhsm demo bench vectors

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) softhsm

## Start the whole gateway on the embedded default (Tansu broker, SQLite, HTTPS API with mutual
## TLS on https://localhost:8000; development CA and certificates in var/tls).
run: $(STAMP)
	$(BIN)/attest-gateway serve --dev-tls

## Debian's chromium for the dashboard's browser test (installed only when missing; needs root).
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "warning: /usr/bin/chromium is missing (apt-get install chromium): the dashboard test will fail"

## Debian's SoftHSM2 (a PKCS#11 token in software) for the key store's tests (installed only when
## missing; needs root).
softhsm:
	@test -x /usr/bin/softhsm2-util || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq softhsm2; } \
	  || echo "warning: softhsm2 is missing (apt-get install softhsm2): the PKCS#11 key store tests are skipped"

## Lint, check the layer contracts (import-linter), type-check and run every test (unit,
## integration, end-to-end).
test: $(STAMP) browser softhsm
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

## Regenerate the published contracts (docs/openapi.json, docs/asyncapi.json,
## docs/messages.md) and the README's configuration table from the code; tests check they match.
docs: $(STAMP)
	$(BIN)/attest-gateway contracts write docs
	$(BIN)/attest-gateway config docs --write README.md

## The envelope's test vectors for other implementations (docs/envelope.md); new ciphertexts.
vectors: $(STAMP)
	$(BIN)/python -m attest_gateway.devtools.vectors --out docs/vectors/envelope-vectors.json

## A living demo next to `make run`: its own gateway on 127.0.0.1:8001 (state in var/demo) that
## plays 45 days of national traffic in about eight minutes on a simulated clock (a setting of
## the gateway, SIMULATED_CLOCK_START), with a progress bar, then goes on live and prints the
## ministry dashboard's address. When a PostgreSQL answers on 127.0.0.1:5432 it plays into a
## database of a new name it creates there (DEMO_POSTGRES names the server) and drops that one
## when it stops; it never drops or changes another. Else SQLite in var/demo. Installs nothing.
DEMO_POSTGRES ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
demo: $(STAMP)
	rm -rf var/demo
	@echo "make demo: 45 days of history in about 8 minutes, then live until Ctrl-C"
	@if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then \
	  VAR_DIR=var/demo API_PORT=8001 $(BIN)/attest-gateway simulate --serve \
	    --own-database '$(DEMO_POSTGRES)'; \
	else VAR_DIR=var/demo API_PORT=8001 $(BIN)/attest-gateway simulate --serve; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache

## Every benchmark, baselines included, on one embedded broker (and the local PostgreSQL):
## writes bench/RESULTS.md and bench/results.json. Not a test: nothing asserts a threshold.
bench: $(STAMP)
	$(BIN)/python -m bench.run
