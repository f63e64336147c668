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

# A Secrets Store CSI volume as the driver writes it (each object a symlink
# through ..data, rotated by swapping ..data), served the way the Azure Key
# Vault walkthrough (docs/azure-key-vault.md) does it on current Trustee:
# mounted at a side path, one flat LocalFs name linked per object.
# DEMO_LAYOUT=tree serves it as Trustee <= v0.18 did: mounted at
# <repository>/default/akv.
LAYOUT=${DEMO_LAYOUT:-localfs}
gen="..$(date -u +%Y_%m_%d_%H_%M_%S).000000000"
write_csi() { # dir
	mkdir -p "$1/$gen"
	printf 'a secret' >"$1/$gen/coco_one"
	printf 'another secret' >"$1/$gen/coco_two"
	ln -s "$gen" "$1/..data"
	ln -s ..data/coco_one "$1/coco_one"
	ln -s ..data/coco_two "$1/coco_two"
}
case "$LAYOUT" in
localfs)
	mkdir -p "$DEMO/mnt/akv"
	akv="$(cd "$DEMO/mnt/akv" && pwd)" # absolute: the links must resolve from anywhere
	write_csi "$akv"
	mkdir -p "$DEMO/repository/repository"
	for obj in coco_one coco_two; do
		ln -s "$akv/$obj" "$DEMO/repository/repository/default\x2Fakv\x2F$obj"
	done
	say "seeded $akv (CSI layout) and linked each object into $DEMO/repository/repository/ (Trustee LocalFs names, e.g. default\x2Fakv\x2Fcoco_one)"
	;;
tree)
	akv="$DEMO/repository/default/akv"
	write_csi "$akv"
	say "seeded $akv (CSI layout mounted in the Trustee <= v0.18 tree)"
	;;
*)
	echo "DEMO_LAYOUT=$LAYOUT: want localfs or tree" >&2
	exit 2
	;;
esac

say "starting the test KBS (HTTPS, throwaway CA in $DEMO/ca.pem, allow-all policy, --layout $LAYOUT)"
"$BIN/testkbs" --repo-dir "$DEMO/repository" --layout "$LAYOUT" --tls --ca-out "$DEMO/ca.pem" \
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
# Ready means cdh-proxy logged "listening": a /healthz answer could come
# from another process holding the port.
for _ in $(seq 200); do
	grep -q 'msg=listening' "$DEMO/cdh-proxy.log" && break
	kill -0 "${pids[-1]}" 2>/dev/null || break
	sleep 0.05
done
grep -q 'msg=listening' "$DEMO/cdh-proxy.log" || { cat "$DEMO/cdh-proxy.log"; echo "cdh-proxy did not start (is $BIND in use? set DEMO_BIND)" >&2; exit 1; }

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

say "a KBS plugin other than resource (the test KBS's sample plugin, answered unencrypted):"
show "http://$BIND/cdh/plugin/sample/hello"

say "cdh-proxy log:"
sed 's/^/    /' "$DEMO/cdh-proxy.log"
if [ "$secret" != "a secret" ]; then
	echo "demo FAILED: expected 'a secret', got '$secret'" >&2
	exit 1
fi
say "demo OK: the workload got 'a secret'"
