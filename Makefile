# cdh-proxy. Needs only Go; everything else is installed or built here.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PKGS    := ./...
# containers/image verifies GPG signatures in pure Go only with this tag
# (without it, it wants cgo and libgpgme). Every go command needs it; plain
# `go test ./...` outside make: export GOFLAGS=-tags=containers_image_openpgp.
export GOFLAGS := -tags=containers_image_openpgp
# Native fuzz targets run by fuzz-short, FUZZTIME each (default 30s; CI
# uses the default: 14 targets, ~7.5 minutes). FUZZTIME=5m make fuzz-short for
# longer runs. scripts/fuzz.sh explains its one retry.
FUZZ_TARGETS := ./resource:FuzzParseEscaped ./resource:FuzzValidSegment ./resource:FuzzParseURI \
	./kbsclient:FuzzDecryptInput ./kbsclient:FuzzClassify ./kbsclient:FuzzTokenLifetime ./kbsclient:FuzzKBSResponses \
	./sealed:FuzzParse ./config:FuzzParseCDH ./config:FuzzParseAA ./attester/azure/evidence:FuzzParse \
	./imagepull:FuzzAnnotationPacket ./imagepull:FuzzPolicy ./eventlog:FuzzEventLog

.PHONY: all build test test-tools lint vet fmt demo fuzz-short bench bench-short bench-tools soak verify-deploy release image generate clean

all: build

## build: bin/cdh-proxy (static, stripped) and the test helpers.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/cdh-proxy ./cmd/cdh-proxy
	$(GO) build -o $(BIN)/testkbs ./test/cmd/testkbs
	$(GO) build -o $(BIN)/fetch ./test/cmd/fetch
	$(GO) build -o $(BIN)/baseline ./test/cmd/baseline

## test: the full suite: lint, race tests (unit, end-to-end through the real
## binaries, and in a guest kernel: test/guest), short fuzzing, verify-deploy.
## The short benchmarks moved to `make bench` when the guest tests came in,
## to keep CI under 10 minutes; `go vet` still compiles the benchmark suite.
test: lint test-tools
	$(GO) test -race -count=1 $(PKGS)
	$(MAKE) fuzz-short
	$(MAKE) verify-deploy

## test-tools: what the tests need beyond Go: swtpm (the Azure vTPM tests),
## systemd-analyze (verify-deploy) and qemu-system-x86 (the guest tests,
## test/guest), from Debian; fails loudly if it cannot. The guest's kernel,
## busybox and cryptsetup are fetched by the guest tests themselves
## (apt-get download, cached in ~/.cache/cdh-proxy/guest).
test-tools:
	./scripts/need.sh swtpm swtpm swtpm-tools
	./scripts/need.sh systemd-analyze systemd
	./scripts/need.sh qemu-system-x86_64 qemu-system-x86

lint: vet fmt

# -race: vet compiles every package for its type information; with the
# test run's build flags those compilations are the ones `go test -race`
# reuses from the build cache (a cold CI run: 118 s → 81 s for both).
vet:
	$(GO) vet -race $(PKGS)

fmt:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz-short:
	./scripts/fuzz.sh $(FUZZ_TARGETS)

## demo: local test KBS + cdh-proxy --attester sample, curl the secret.
demo: build
	./scripts/demo.sh

## bench: every benchmark part for a moment first (so a broken part fails
## fast), then the full suite; writes BENCHMARKS.md (a few minutes).
bench: build bench-tools test-tools
	$(GO) run ./test/bench -short -out /dev/null
	$(GO) run ./test/bench -out BENCHMARKS.md

## bench-short: every benchmark part for a moment, so the suite cannot rot.
bench-short: build
	$(GO) run ./test/bench -short -out /dev/null

# containerd from Debian (P6 pulls beside it; fails loudly without it);
# wrk and hyperfine when we may install them, else the in-repo Go load
# generator.
bench-tools:
	./scripts/need.sh containerd containerd
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y wrk hyperfine >/dev/null 2>&1; } || echo "wrk not installed: using the in-repo Go load generator"

## soak: 1M mixed requests (hits, misses, 404s) against the real binary; RSS and goroutines sampled.
soak: build
	$(GO) run ./test/soak -requests 1000000

## verify-deploy: deploy/systemd/cdh-proxy.service passes systemd-analyze verify.
verify-deploy: build
	./scripts/verify-deploy.sh

## image: the sidecar image (needs a running Docker daemon).
image:
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker daemon reachable (docker info failed)" >&2; exit 1; }
	docker build --build-arg VERSION=$(VERSION) -t cdh-proxy:$(VERSION) .

## release: static linux/amd64 and linux/arm64 binaries with SHA-256 checksums in dist/.
release:
	rm -rf dist && mkdir -p dist
	for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/cdh-proxy-linux-$$arch ./cmd/cdh-proxy || exit 1; \
	done
	cd dist && sha256sum cdh-proxy-linux-* > SHA256SUMS && cat SHA256SUMS

## generate: rebuild the committed protobuf/ttrpc code in api/ (needs protoc: apt-get install protobuf-compiler).
generate:
	./scripts/generate.sh

clean:
	rm -rf $(BIN) .demo dist
