package guestvm

import (
	"fmt"
	"strings"
)

// MemoryScript is a shell snippet for a guest command: it prints the three
// drop-ins' memory from /proc/<pid>/smaps_rollup as "mem <NAME> <field>
// <kB>" lines (NAME as in CDH_GUEST_PID_<NAME>), which ParseMemory reads.
const MemoryScript = `for n in ATTESTATION_AGENT CONFIDENTIAL_DATA_HUB API_SERVER_REST; do
	eval pid=\$CDH_GUEST_PID_$n
	awk -v n=$n '/^(Rss|Pss|Pss_Anon|Pss_File|Pss_Shmem):/ {printf "mem %s %s %s\n", n, $1, $2}' /proc/$pid/smaps_rollup
done
`

// Memory is one process's readings in kB. File counts the binary's pages:
// it lives in the initramfs (shmem), so they are Pss_Shmem here where a
// disk image's would be Pss_File.
type Memory struct{ Rss, Pss, Anon, File int }

// ParseMemory reads MemoryScript's lines among a command's stdout lines,
// by drop-in NAME.
func ParseMemory(lines []string) map[string]Memory {
	raw := map[string]map[string]int{}
	for _, l := range lines {
		var name, field string
		var kb int
		if _, err := fmt.Sscanf(l, "mem %s %s %d", &name, &field, &kb); err != nil {
			continue
		}
		if raw[name] == nil {
			raw[name] = map[string]int{}
		}
		raw[name][strings.TrimSuffix(field, ":")] = kb
	}
	out := map[string]Memory{}
	for name, m := range raw {
		out[name] = Memory{Rss: m["Rss"], Pss: m["Pss"], Anon: m["Pss_Anon"], File: m["Pss_File"] + m["Pss_Shmem"]}
	}
	return out
}

// Sum adds the readings of several processes.
func Sum(ms map[string]Memory) Memory {
	var s Memory
	for _, m := range ms {
		s.Rss, s.Pss, s.Anon, s.File = s.Rss+m.Rss, s.Pss+m.Pss, s.Anon+m.Anon, s.File+m.File
	}
	return s
}
