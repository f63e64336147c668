package httpapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// pipeListener hands the server in-memory connections, so a whole HTTP
// server runs inside a synctest bubble.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8006} }

func (l *pipeListener) dial() net.Conn {
	client, server := net.Pipe()
	l.conns <- server
	return client
}

// open reports whether the server still holds c open: a closed one reads EOF.
func open(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	_ = c.SetReadDeadline(time.Time{})
	return !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe)
}

func request(t *testing.T, c net.Conn) string {
	t.Helper()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The header, idle and serving limits hold without per-request deadlines.
func TestConnectionLimits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		ln := newPipeListener()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Serve(ctx, ln, h, 2*time.Second, time.Second) }()

		// Slow headers: cut after the header timeout.
		slow := ln.dial()
		go io.WriteString(slow, "GET / HTTP/1.1\r\nHost: 127.")
		time.Sleep(headerTimeout - watchTick)
		synctest.Wait()
		if !open(t, slow) {
			t.Fatal("connection cut before the header timeout")
		}
		time.Sleep(2 * watchTick)
		synctest.Wait()
		if open(t, slow) {
			t.Fatal("slow headers still served after the header timeout")
		}

		// Idle keep-alive: kept while used, cut after the idle timeout.
		idle := ln.dial()
		if body := request(t, idle); body != "ok" {
			t.Fatalf("%q", body)
		}
		time.Sleep(idleTimeout - watchTick)
		if body := request(t, idle); body != "ok" {
			t.Fatalf("reused connection: %q", body)
		}
		time.Sleep(idleTimeout + watchTick)
		synctest.Wait()
		if open(t, idle) {
			t.Fatal("idle connection kept past the idle timeout")
		}

		// A request that outlives budget + slack loses its connection.
		stuck := ln.dial()
		go io.WriteString(stuck, "GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		time.Sleep(2*time.Second + writeSlack + 2*watchTick)
		synctest.Wait()
		if open(t, stuck) {
			t.Fatal("a stuck response held its connection past budget + slack")
		}
		close(release)

		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		for _, c := range []net.Conn{slow, idle, stuck} {
			c.Close()
		}
	})
}

func TestTrimPort(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8006": "127.0.0.1", "localhost:1": "localhost", "localhost": "localhost",
		"[::1]:8006": "[::1]", "127.0.0.1:": "127.0.0.1:", "evil.example:80": "evil.example", "8006": "8006",
	} {
		if got := trimPort(in); got != want {
			t.Errorf("trimPort(%q) = %q, want %q", in, got, want)
		}
	}
}
