# The quickstart: `make demo`, then `make test`. Everything runs from the virtualenv .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO := protos/claude_gateway/v1/chat.proto
PROTOC = $(PY) -m grpc_tools.protoc -I protos \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc

.PHONY: setup demo serve test lint typecheck proto-check protos bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./client -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m server.demo

serve: setup
	$(PY) -m server

# Regenerate the committed stubs after editing the proto.
protos: setup
	$(PROTOC) --python_out=client --grpc_python_out=client --mypy_out=client --mypy_grpc_out=client $(PROTO)

# Fails when the committed stubs differ from what the proto generates.
proto-check: setup
	@tmp=$$(mktemp -d) && \
	$(PROTOC) --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) >/dev/null && \
	for f in chat_pb2.py chat_pb2.pyi chat_pb2_grpc.py chat_pb2_grpc.pyi; do \
	  diff -u client/claude_gateway/v1/$$f $$tmp/claude_gateway/v1/$$f || { echo "proto drift: run 'make protos' and commit"; exit 1; }; \
	done && rm -rf $$tmp && echo "proto-check: stubs match $(PROTO)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy server tests client/claude_gateway

test: lint typecheck proto-check
	$(PY) -m pytest -q

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
