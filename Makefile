# cdh-proxy. Needs only Go; everything else is installed or built here.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PKGS    := ./...
# Fuzz targets run by fuzz-short: package:FuzzName:budget. Budgets are
# execution counts (about 10 s each on a 2-core machine), not durations: with
# a duration, Go 1.26's fuzz coordinator can fail spuriously with "context
# deadline exceeded" at the deadline (golang/go#75804, fixed in Go 1.27).
# FUZZTIME=5m make fuzz-short overrides every budget for a longer run.
FUZZ_TARGETS := ./resource:FuzzParseEscaped:300000x \
	./resource:FuzzValidSegment:300000x \
	./kbsclient:FuzzDecryptInput:90000x \
	./kbsclient:FuzzClassify:90000x \
	./kbsclient:FuzzTokenLifetime:60000x \
	./config:FuzzParseCDH:150000x \
	./config:FuzzParseAA:100000x \
	./resource:FuzzParseURI:200000x \
	./sealed:FuzzParse:150000x

.PHONY: all build test lint vet fmt demo fuzz-short bench bench-short bench-tools generate clean

all: build

## build: bin/cdh-proxy (static, stripped) and the test helpers.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/cdh-proxy ./cmd/cdh-proxy
	$(GO) build -o $(BIN)/testkbs ./test/cmd/testkbs
	$(GO) build -o $(BIN)/fetch ./test/cmd/fetch
	$(GO) build -o $(BIN)/baseline ./test/cmd/baseline

## test: the full suite: lint, race tests (unit + end-to-end through the real binaries), short fuzzing, short benchmarks.
test: lint
	$(GO) test -race -count=1 $(PKGS)
	$(MAKE) fuzz-short
	$(MAKE) bench-short

lint: vet fmt

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags cdhproxy_fakehw ./cmd/...

fmt:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${FUZZTIME:-$${rest#*:}}; \
		echo "fuzz $$pkg $$name ($$budget)"; \
		$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$$budget $$pkg; \
	done

## demo: local test KBS + cdh-proxy --attester sample, curl the secret.
demo: build
	./scripts/demo.sh

## bench: the full benchmark suite; writes BENCHMARKS.md (a few minutes).
bench: build bench-tools
	$(GO) run ./test/bench -out BENCHMARKS.md

## bench-short: every benchmark part for a moment, so the suite cannot rot (CI).
bench-short: build
	$(GO) run ./test/bench -short -out /dev/null

# wrk and hyperfine from Debian when we may install them; without wrk the
# suite uses its in-repo Go load generator.
bench-tools:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y wrk hyperfine >/dev/null 2>&1; } || echo "wrk not installed: using the in-repo Go load generator"

## generate: rebuild the committed protobuf/ttrpc code in api/ (needs protoc: apt-get install protobuf-compiler).
generate:
	./scripts/generate.sh

clean:
	rm -rf $(BIN) .demo
