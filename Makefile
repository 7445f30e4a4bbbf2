# Everything a fresh machine needs is installed by these targets: a virtualenv
# with the pinned Python packages and the pinned OPA built from its Go module.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := .cache
OPA_VERSION := v1.22.3
OPA := $(CACHE)/bin/opa
VEGETA_VERSION := v12.13.0
VEGETA := $(CACHE)/bin/vegeta
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
export BEDROCK_PROXY_OPA := $(abspath $(OPA))

.PHONY: all deps opa redis test lint policy-test demo bench bench-detectors soak clean

all: test

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,fast]"
	touch $@

opa: $(OPA)

$(OPA):
	@test -x "$(GO)" || { echo "error: Go toolchain not found (needed to build opa $(OPA_VERSION)); install Go or set GO=/path/to/go" >&2; exit 1; }
	mkdir -p $(CACHE)/bin
	GOBIN=$(abspath $(CACHE)/bin) GOFLAGS=-mod=mod $(GO) install github.com/open-policy-agent/opa@$(OPA_VERSION) \
		|| { echo "error: building opa $(OPA_VERSION) from its Go module failed (see above)" >&2; exit 1; }
	@$(OPA) version | head -1

policy-test: $(OPA)
	$(OPA) fmt --fail -l policies/
	$(OPA) check --strict policies/
	$(OPA) test policies/ -v --coverage --format=json > $(CACHE)/opa-coverage.json \
		|| { $(OPA) test policies/ -v; exit 1; }
	$(OPA) test policies/
	@$(BIN)/python -c "import json; c=json.load(open('$(CACHE)/opa-coverage.json'))['coverage']; print(f'rego coverage: {c:.1f}%'); raise SystemExit(c < 90)"

lint: deps
	$(BIN)/ruff check proxy proxy_dev tests bench
	$(BIN)/mypy

# The shared task store's tests start a real redis-server (Debian package).
redis:
	command -v redis-server >/dev/null || (apt-get update && apt-get install -y redis-server)

test: deps opa $(VEGETA) redis policy-test lint
	$(BIN)/pytest -q

demo: deps opa
	$(BIN)/python -m proxy_dev.demo --dir demo-stack

# Benchmarks (bench/README.md): starts its own stack, stops by itself, writes bench/results/.
bench: deps $(OPA) $(VEGETA)
	$(BIN)/python -m bench --vegeta $(abspath $(VEGETA)) $(BENCH_ARGS)

# The classification detectors on adversarial text of 1-25 MB (bench/README.md);
# one process, no stack. BENCH_ARGS="--quick" for small sizes.
bench-detectors: deps
	$(BIN)/python -m bench.detectors $(BENCH_ARGS)

# Legitimate clients beside hostile ones for a few minutes (bench/README.md, "Soak");
# loopback only, stops by itself. SOAK_ARGS="--quick" for a short smoke run.
soak: deps opa
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

$(VEGETA):
	@test -x "$(GO)" || { echo "error: Go toolchain not found (needed to build vegeta $(VEGETA_VERSION)); install Go or set GO=/path/to/go" >&2; exit 1; }
	mkdir -p $(CACHE)/bin
	GOBIN=$(abspath $(CACHE)/bin) GOFLAGS=-mod=mod $(GO) install github.com/tsenart/vegeta/v12@$(VEGETA_VERSION) \
		|| { echo "error: building vegeta $(VEGETA_VERSION) from its Go module failed (see above)" >&2; exit 1; }

clean:
	rm -rf $(VENV) $(CACHE) demo-stack
