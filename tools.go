//go:build tools

// Package tools pins the code generators used by make generate in go.mod.
package tools

import (
	_ "github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
