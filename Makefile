# Two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv when it is missing, and reinstall into it when pyproject.toml, a package's
# pyproject.toml under packages/ or constraints.txt is newer than the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
# Every part, editable: the client, sf-bridge with its test and dev tools, the sandbox and demo.
PARTS := -e ./packages/client -e '.[dev]' -e ./packages/sandbox
LOCK_VENV := $(VENV)-lock

.PHONY: demo test lint typecheck fmt bench lock proto clean

$(STAMP): pyproject.toml packages/client/pyproject.toml packages/sandbox/pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) $(PARTS)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sf-bridge demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Re-resolves every dependency to the newest version the pyproject files allow, in a scratch
# virtualenv, and writes the result to constraints.txt; the next `make test` installs it.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet $(PARTS)
	head -n 3 $(CONSTRAINTS) > $(CONSTRAINTS).new
	$(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

# Regenerates the Pub/Sub API stubs (committed) from Salesforce's pubsub_api.proto, with
# grpcio-tools in a scratch virtualenv (see src/sf_bridge/intake/pubsub/proto/README.md).
PROTO_VENV := $(VENV)-proto
proto:
	rm -rf $(PROTO_VENV)
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install --quiet grpcio-tools==1.85.1
	$(PROTO_VENV)/bin/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
		--grpc_python_out=src src/sf_bridge/intake/pubsub/proto/pubsub_api.proto
	rm -rf $(PROTO_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
