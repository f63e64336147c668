// Package proc starts cdh-proxy (or any slog-JSON-logging helper) as a child
// process for end-to-end tests and benchmarks, and waits for its readiness
// log line.
package proc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is a running child process.
type Proc struct {
	Cmd  *exec.Cmd
	Addr string // the "addr" of the readiness line, if any
	Logs *Buffer
	done chan error
}

// Buffer is a goroutine-safe log buffer.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs bin with args and extra env, and waits (up to 10 s) for a JSON
// log line whose msg is readyMsg. The race runtime's 1 s exit sleep is
// disabled, since tests stop many processes.
func Start(bin string, env []string, readyMsg string, args ...string) (*Proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	pr, pw := io.Pipe()
	logs := &Buffer{}
	cmd.Stderr = io.MultiWriter(pw, logs)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, Logs: logs, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); pw.Close() }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == readyMsg {
				addr <- line.Addr
				break
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case p.Addr = <-addr:
		return p, nil
	case err := <-p.done:
		return nil, fmt.Errorf("%s exited before %q: %v\n%s", bin, readyMsg, err, logs)
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("%s: no %q within 10 s\n%s", bin, readyMsg, logs)
	}
}

// Stop sends SIGTERM and waits up to timeout for a clean (zero) exit.
func (p *Proc) Stop(timeout time.Duration) error {
	if p.Cmd.ProcessState != nil {
		return nil
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		return fmt.Errorf("did not stop within %v of SIGTERM", timeout)
	}
}
