#!/usr/bin/env bash
# A/B two cdh-proxy builds on the warm hit: CPU µs per request (server
# user+system time ÷ requests under wrk), alternating rounds so that this
# shared machine's noise hits both alike.
#   scripts/binary-ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Needs wrk (scripts/need.sh wrk wrk) and bin/testkbs (make build).
set -euo pipefail
old=$1 new=$2 rounds=${3:-5}
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
mkdir -p "$dir/kbs/default/b"
printf '%032d' 7 >"$dir/kbs/default/b/s"
bin/testkbs -repo-dir "$dir/kbs" -layout tree -addr-file "$dir/kbs.url" >"$dir/kbs.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -s "$dir/kbs.url" ] && break; sleep 0.1; done
url=$(cat "$dir/kbs.url")
start() { # binary port
	"$1" serve --attester sample --kbs-url "$url" --bind "127.0.0.1:$2" --cmdline - --initdata-dir - --cache-ttl 1h --log-level error &
	pids+=($!)
	for _ in $(seq 50); do curl -sf "http://127.0.0.1:$2/cdh/resource/default/b/s" >/dev/null && return; sleep 0.1; done
	echo "$1 did not serve" >&2
	exit 1
}
start "$old" 18701
a=${pids[-1]}
start "$new" 18702
b=${pids[-1]}
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{print ($14+$15)/t}' "/proc/$1/stat"; }
run() { # pid port conns → µs/request
	local c0 r c1
	c0=$(cpu "$1")
	r=$(wrk -t2 -c"$3" -d3s "http://127.0.0.1:$2/cdh/resource/default/b/s" | awk '/^Requests\/sec/ {print $2}')
	c1=$(cpu "$1")
	awk -v c0="$c0" -v c1="$c1" -v r="$r" 'BEGIN {printf "%.1f", (c1-c0)/(r*3)*1e6}'
}
for conns in 16 64; do
	for i in $(seq "$rounds"); do
		echo "conns=$conns round=$i old=$(run "$a" 18701 "$conns") new=$(run "$b" 18702 "$conns")"
	done
done
