#!/usr/bin/env bash
# make verify-deploy: the systemd unit must pass `systemd-analyze verify`
# (Debian's systemd package; installed here when missing and possible).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get install -y systemd >/dev/null
	else
		echo "verify-deploy: systemd-analyze missing and cannot be installed (not root or no apt-get)" >&2
		exit 1
	fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify checks that ExecStart exists: point it at the freshly built binary.
sed "s|/usr/local/bin/cdh-proxy|$PWD/bin/cdh-proxy|" deploy/systemd/cdh-proxy.service >"$tmp/cdh-proxy.service"
out=$(systemd-analyze verify "$tmp/cdh-proxy.service" 2>&1) || { printf '%s\n' "$out"; exit 1; }
if [ -n "$out" ]; then
	printf '%s\n' "$out"
	echo "verify-deploy: systemd-analyze printed warnings" >&2
	exit 1
fi
echo "verify-deploy: deploy/systemd/cdh-proxy.service OK"
