package cli

import (
	"fmt"
	"io"
	"runtime/debug"
)

// printVersion reports the release version (set with -ldflags by make
// build), the module version, the VCS commit when the build recorded it, and
// the Go version.
func printVersion(w io.Writer, version string) {
	fmt.Fprintln(w, "cdh-proxy", version)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	fmt.Fprintf(w, "module %s %s\n", bi.Main.Path, bi.Main.Version)
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if rev := settings["vcs.revision"]; rev != "" {
		fmt.Fprintf(w, "commit %s %s modified=%s\n", rev, settings["vcs.time"], settings["vcs.modified"])
	}
	fmt.Fprintf(w, "go %s %s/%s cgo=%s\n", bi.GoVersion, settings["GOOS"], settings["GOARCH"], settings["CGO_ENABLED"])
}
