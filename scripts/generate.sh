#!/usr/bin/env bash
# make generate: rebuild the committed protobuf/ttrpc code in api/.
# Needs protoc (Debian: apt-get install protobuf-compiler); the Go plugins are
# installed into bin/ at the versions pinned in go.mod.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
export GOBIN="$PWD/bin"
go install google.golang.org/protobuf/cmd/protoc-gen-go
go install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
export PATH="$GOBIN:$PATH"
for dir in api/cdh api/aa api/keyprovider; do
	protoc -I "$dir" --go_out=paths=source_relative:"$dir" --go-ttrpc_out=paths=source_relative:"$dir" "$dir"/*.proto
done
