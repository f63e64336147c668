#!/usr/bin/env bash
# guest-vm.sh [--file HOST:GUEST]... [--disk NAME:SIZE]... [--cmdline ARGS] [--mem MiB] -- COMMAND...
#
# Boots the guest test bed (a Debian kernel under QEMU, software emulation)
# where a kata-agent stand-in starts attestation-agent, confidential-data-hub
# and api-server-rest as kata-agent does, runs COMMAND as root once they are
# up, streams its output and the drop-ins' logs, and exits with COMMAND's
# status. The guest reaches the host's loopback at 10.0.2.2.
# docs/testing.md describes the test bed; test/cmd/guest-vm is the code.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/need.sh qemu-system-x86_64 qemu-system-x86
exec go run -tags=containers_image_openpgp ./test/cmd/guest-vm "$@"
