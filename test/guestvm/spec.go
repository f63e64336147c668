package guestvm

// Spec is what the host tells the guest init for one boot. It travels in
// the run's initramfs part at SpecPath.
type Spec struct {
	// Token marks the lines the init writes for the host, so nothing the
	// command prints can pass for them.
	Token string `json:"token"`
	// Command runs as root once the drop-ins are up; its exit status is
	// the boot's.
	Command []string `json:"command"`
	// Files are guest paths staged under StageDir, copied into place after
	// /run is mounted (a file for /run would otherwise be hidden).
	Files []string `json:"files,omitempty"`
	// InitData says InitDataStage holds initdata, which the init
	// writes where kata-agent writes it.
	InitData bool `json:"initdata,omitempty"`
	// Env is added to the environment of the drop-ins and the command.
	Env []string `json:"env,omitempty"`
}

const (
	// SpecPath is where the guest finds the Spec.
	SpecPath = "/guest/spec.json"
	// StageDir holds the run's files until the init puts them in place.
	StageDir = "/guest/files"
	// InitDataStage holds the run's initdata, if any.
	InitDataStage = "/guest/initdata.toml"
)

// Line kinds after the "@@<token>:" prefix on the console.
const (
	KindStdout = "out"    // a line of the command's stdout
	KindStderr = "err"    // a line of the command's stderr
	KindExit   = "exit"   // the command's exit status
	KindDropIn = "dropin" // "<name> <exit status>" of a stopped drop-in
	KindReady  = "ready"  // every drop-in socket is up; the command starts
	KindFailed = "failed" // the init could not run the command: the reason
	// KindConsole is, for Options.Line only, any other console line: the
	// kernel's, the init's, the drop-ins' logs.
	KindConsole = "console"
)
