# The quickstart: `make demo`, then `make test`. Everything runs from the virtualenv .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO := protos/claude_gateway/v1/chat.proto
PROTOC = $(PY) -m grpc_tools.protoc -I protos \
	--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc

.PHONY: setup demo serve sim serve-sim test lint typecheck proto-check protos go-protos fuzz image bench clean node buf-lint buf-breaking ts-protos ts-check page page-check

setup: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./client -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m simulator.demo

serve: setup
	$(PY) -m server

# The simulator on 127.0.0.1:8787 at 20 tokens/s, and a gateway aimed at it (in another shell).
sim: setup
	$(PY) -m simulator --port 8787 --ttft 0.3 --tps 20

serve-sim: setup
	ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=any $(PY) -m server

# Regenerate the committed stubs (Python and TypeScript) after editing the proto.
protos: setup ts-protos
	$(PROTOC) --python_out=client --grpc_python_out=client --mypy_out=client --mypy_grpc_out=client $(PROTO)
	@if command -v protoc >/dev/null && command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; \
	then $(MAKE) -s go-protos; \
	else echo "protos: Go code not regenerated: apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc, then make go-protos"; fi

# The Go module claude-grpc-gateway/gen/go (gen/go, committed): Debian's protoc 3.21, protoc-gen-go 1.28 and
# protoc-gen-go-grpc 1.0. tests/test_codegen.py fails when the committed code differs from what they generate.
GO_MODULE := claude-grpc-gateway/gen/go
GO_PROTOC = protoc -I protos --go_out=$(1) --go_opt=module=$(GO_MODULE) \
	--go-grpc_out=$(1) --go-grpc_opt=module=$(GO_MODULE) $(PROTO:protos/%=%)

go-protos:
	$(call GO_PROTOC,gen/go)

# Fails when the committed stubs differ from what the proto generates.
proto-check: setup
	@tmp=$$(mktemp -d) && \
	$(PROTOC) --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO) >/dev/null && \
	for f in chat_pb2.py chat_pb2.pyi chat_pb2_grpc.py chat_pb2_grpc.pyi; do \
	  diff -u client/claude_gateway/v1/$$f $$tmp/claude_gateway/v1/$$f || { echo "proto drift: run 'make protos' and commit"; exit 1; }; \
	done && rm -rf $$tmp && echo "proto-check: stubs match $(PROTO)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server simulator client tests bench

typecheck: setup
	$(VENV)/bin/mypy server simulator tests bench client/claude_gateway client/examples

# Node tooling (buf, protoc-gen-es, tsc) and the TypeScript package client/ts (a workspace) in
# ./node_modules, exactly as package-lock.json pins; then the package is compiled to client/ts/dist.
BUF := $(CURDIR)/node_modules/.bin/buf
NODE_STAMP := node_modules/.installed
TS_BUILT := client/ts/dist/.built
TS_SOURCES := $(shell find client/ts/src client/ts/examples -name '*.ts') client/ts/package.json client/ts/tsconfig.json client/ts/tsconfig.examples.json

node: $(TS_BUILT)

$(NODE_STAMP): package.json package-lock.json client/ts/package.json client/web/package.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

$(TS_BUILT): $(NODE_STAMP) $(TS_SOURCES)
	npm run -s build --workspace client/ts
	touch $@

# Regenerate client/ts/src/gen (protobuf-es) with client/ts/buf.gen.yaml and the pinned protoc-gen-es.
ts-protos: $(NODE_STAMP)
	cd client/ts && $(BUF) generate

# Fails when the committed TypeScript code differs from what the protos generate.
ts-check: $(NODE_STAMP)
	@tmp=$$(mktemp -d) && (cd client/ts && $(BUF) generate -o $$tmp) && \
	diff -ru client/ts/src/gen $$tmp/src/gen || { echo "proto drift: run 'make protos' and commit"; exit 1; } ; \
	rm -rf $$tmp && echo "ts-check: client/ts/src/gen matches the protos"

buf-lint: node
	$(BUF) lint

# Fails on a wire- or source-incompatible change since the released API; protos/released/v1.binpb is
# that release's image (docs/development.md, "Cutting a proto release", says how to renew it).
buf-breaking: node
	$(BUF) breaking protos --against protos/released/v1.binpb

# The chat page's browser bundle, server/page/chat.js: client/web/src on @claude-gateway/client (client/ts/src)
# and @connectrpc/connect-web. Committed, so that the demo, the wheel and images need no Node.js.
PAGE_BUNDLE := server/page/chat.js
ESBUILD_PAGE = node_modules/.bin/esbuild client/web/src/chat.ts --bundle --format=esm --target=es2022 --minify \
	--legal-comments=none --alias:@claude-gateway/client=./client/ts/src/index.ts --log-level=warning

page: node
	$(ESBUILD_PAGE) --outfile=$(PAGE_BUNDLE)

# Fails when the page's sources do not type-check or the committed bundle differs from what they build.
page-check: node
	node_modules/.bin/tsc -p client/web
	@tmp=$$(mktemp -d) && $(ESBUILD_PAGE) --outfile=$$tmp/chat.js && \
	cmp -s $$tmp/chat.js $(PAGE_BUNDLE) || { echo "page drift: run 'make page' and commit $(PAGE_BUNDLE)"; exit 1; }; \
	rm -rf $$tmp; echo "page-check: $(PAGE_BUNDLE) matches client/web/src"

test: lint typecheck proto-check ts-check page-check buf-lint buf-breaking node
	$(PY) -m pytest -q -n 4 --dist loadfile

# 10,000 generated and mutated requests at a deployed gateway over gRPC, Connect JSON and the Messages API each (tests/test_fuzz.py).
fuzz: setup
	FUZZ_REQUESTS=10000 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

# The container image built as tests/test_container.py builds it, with no registry in reach (root; Debian's
# docker.io and mmdebstrap): prints its size and an idle gateway's memory. With a registry, plain `docker build .`.
image: setup
	$(PY) -m tests.container

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
