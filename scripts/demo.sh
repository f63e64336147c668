#!/usr/bin/env bash
# make demo: a secret travels from a local test KBS (HTTPS, generated CA,
# Secrets Store CSI-style repository) through the full RCAR attestation with
# the sample attester, to curl. Everything runs on 127.0.0.1 and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
DEMO=${DEMO_DIR:-.demo}
BIND=${DEMO_BIND:-127.0.0.1:8006}

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"

# The repository as the Azure Key Vault guide lays it out: default/akv is a
# Secrets Store CSI mount, where each secret is a symlink through ..data.
akv="$DEMO/repository/default/akv"
gen="..$(date -u +%Y_%m_%d_%H_%M_%S).000000000"
mkdir -p "$akv/$gen"
printf 'a secret' >"$akv/$gen/coco_one"
printf 'another secret' >"$akv/$gen/coco_two"
ln -s "$gen" "$akv/..data"
ln -s ..data/coco_one "$akv/coco_one"
ln -s ..data/coco_two "$akv/coco_two"
say "seeded $akv (CSI layout: coco_one -> ..data/coco_one, ..data -> $gen)"

say "starting the test KBS (HTTPS, throwaway CA in $DEMO/ca.pem, allow-all policy)"
"$BIN/testkbs" --repo-dir "$DEMO/repository" --tls --ca-out "$DEMO/ca.pem" \
	--addr-file "$DEMO/kbs.url" >"$DEMO/testkbs.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$DEMO/kbs.url" ] && break; sleep 0.05; done
[ -s "$DEMO/kbs.url" ] || { cat "$DEMO/testkbs.log"; echo "test KBS did not start" >&2; exit 1; }
kbs_url=$(cat "$DEMO/kbs.url")

say "starting cdh-proxy --attester sample on $BIND (KBS $kbs_url)"
"$BIN/cdh-proxy" serve --attester sample --kbs-url "$kbs_url" --kbs-cert "$DEMO/ca.pem" \
	--bind "$BIND" >"$DEMO/cdh-proxy.log" 2>&1 &
pids+=($!)

# get URL: print the body; fail on a non-2xx status.
get() {
	if command -v curl >/dev/null 2>&1; then
		curl -sS --fail-with-body "$1"
	else
		"$BIN/fetch" "$1"
	fi
}
# show URL: print status and body, whatever the status.
show() {
	if command -v curl >/dev/null 2>&1; then
		curl -sS -w '\n(HTTP %{http_code})\n' "$1"
	else
		"$BIN/fetch" "$1" 2>&1 || true
	fi
}
for _ in $(seq 100); do get "http://$BIND/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
get "http://$BIND/healthz" >/dev/null || { cat "$DEMO/cdh-proxy.log"; echo "cdh-proxy did not start (is $BIND in use? set DEMO_BIND)" >&2; exit 1; }

url="http://$BIND/cdh/resource/default/akv/coco_one"
say "curl $url"
secret=$(get "$url")
printf '%s\n' "$secret"

say "again (served from the cache, no attestation):"
if command -v curl >/dev/null 2>&1; then
	curl -sS -o /dev/null -w 'HTTP %{http_code} in %{time_total}s\n' "$url"
fi

say "a missing secret gives an honest 404 with a problem+json body:"
show "http://$BIND/cdh/resource/default/akv/nope"

say "cdh-proxy log:"
sed 's/^/    /' "$DEMO/cdh-proxy.log"
if [ "$secret" != "a secret" ]; then
	echo "demo FAILED: expected 'a secret', got '$secret'" >&2
	exit 1
fi
say "demo OK: the workload got 'a secret'"
