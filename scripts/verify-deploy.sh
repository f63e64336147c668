#!/usr/bin/env bash
# make verify-deploy: the systemd unit and the guest-components drop-ins must
# pass `systemd-analyze verify` (Debian's systemd package; installed by
# need.sh when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/need.sh systemd-analyze systemd
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/units" "$tmp/bin"

# check UNIT: systemd-analyze verify must pass without a word.
check() {
	local out
	out=$(SYSTEMD_UNIT_PATH="$tmp/units:" systemd-analyze verify "$1" 2>&1) || { printf '%s\n' "$out"; exit 1; }
	if [ -n "$out" ]; then
		printf '%s\n' "$out"
		echo "verify-deploy: systemd-analyze printed warnings for $1" >&2
		exit 1
	fi
}

# verify checks that ExecStart exists: point it at the freshly built binary.
sed "s|/usr/local/bin/cdh-proxy|$PWD/bin/cdh-proxy|" deploy/systemd/cdh-proxy.service >"$tmp/units/cdh-proxy.service"
check "$tmp/units/cdh-proxy.service"
echo "verify-deploy: deploy/systemd/cdh-proxy.service OK"

# The guest-components drop-ins, applied to units shaped like the ones guest
# images ship: the binary under its drop-in name, started through "bash -c"
# with an optional config file.
for name in attestation-agent confidential-data-hub api-server-rest; do
	ln -s "$PWD/bin/cdh-proxy" "$tmp/bin/$name"
	printf '%s\n' \
		'[Unit]' "Description=$name (a cdh-proxy drop-in name)" 'After=network.target' \
		'[Service]' 'Type=simple' \
		"ExecStart=/bin/bash -c 'if [ -f /run/peerpod/x.toml ]; then exec $tmp/bin/$name -c /run/peerpod/x.toml; else exec $tmp/bin/$name; fi'" \
		'Restart=always' '[Install]' 'WantedBy=multi-user.target' >"$tmp/units/$name.service"
	cp -r "deploy/systemd/guest-components/$name.service.d" "$tmp/units/"
	check "$tmp/units/$name.service"
	# The drop-in must actually be read, not silently missed: a canary key
	# added to it has to draw a warning.
	echo 'CdhProxyCanary=1' >>"$tmp/units/$name.service.d/10-cdh-proxy.conf"
	if ! SYSTEMD_UNIT_PATH="$tmp/units:" systemd-analyze verify "$tmp/units/$name.service" 2>&1 | grep -q CdhProxyCanary; then
		echo "verify-deploy: $name.service.d was not applied" >&2
		exit 1
	fi
	echo "verify-deploy: deploy/systemd/guest-components/$name.service.d OK"
done
