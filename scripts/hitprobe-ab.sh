#!/usr/bin/env bash
# A/B of warm-hit variants with test/cmd/hitprobe under wrk: alternating
# rounds, each printing req/s and the server's CPU time per request
# (docs/performance.md). Needs wrk (make bench-tools).
#   scripts/hitprobe-ab.sh CONNS SECONDS ROUNDS "name:hitprobe flags" ...
#   scripts/hitprobe-ab.sh 16 3 5 "floor:-mode baseline" "shipped:-mode proxy" "deadlines:-mode proxy -srv deadlines"
set -euo pipefail
conns=$1 dur=$2 rounds=$3
shift 3
bin=$(mktemp -d)/hitprobe
trap 'rm -rf "$(dirname "$bin")"' EXIT
export GOFLAGS="${GOFLAGS:--tags=containers_image_openpgp}"
go build -o "$bin" ./test/cmd/hitprobe
tck=$(getconf CLK_TCK)
declare -A res
for _ in $(seq "$rounds"); do
	for v in "$@"; do
		name=${v%%:*} args=${v#*:}
		addrf=$(mktemp)
		# shellcheck disable=SC2086
		"$bin" $args -dur "$((dur + 2))s" >"$addrf" &
		pid=$!
		for _ in $(seq 100); do [ -s "$addrf" ] && break; sleep 0.02; done
		c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
		out=$(wrk -t1 -c"$conns" -d"${dur}s" "http://$(head -1 "$addrf")/cdh/resource/default/akv/coco_one")
		c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
		n=$(awk '/requests in/{print $1}' <<<"$out")
		rps=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$out")
		cpu=$(awk -v c=$((c1 - c0)) -v n="$n" -v t="$tck" 'BEGIN{printf "%.1f", c/t*1e6/n}')
		res[$name]="${res[$name]:-} ${rps}/s ${cpu}µs"
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		rm -f "$addrf"
	done
done
for v in "$@"; do
	name=${v%%:*}
	echo "$name:${res[$name]}"
done
