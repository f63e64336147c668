package httpapi

import (
	"context"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Connection limits. net/http enforces its Read/Write/Idle timeouts by
// setting socket deadlines on every request — four timer updates per
// request, which cost ~3 µs of the ~20 µs a warm hit takes under
// concurrency (BENCHMARKS.md, P1). cdh-proxy enforces the same limits from
// one owned ticker per server instead: each connection records its state
// and when it entered it, and the watcher closes connections that stay too
// long. Limits are enforced within one tick.
const (
	headerTimeout = 5 * time.Second  // a request's headers, once its first byte arrived
	idleTimeout   = 60 * time.Second // an open connection without a request
	writeSlack    = 10 * time.Second // beyond the budget, to write a response
	watchTick     = time.Second
)

// Connection states, as the watcher sees them.
const (
	connIdle    int32 = iota // new or between requests
	connReading              // a request is being read
	connServing              // in the handler, or writing its response
)

type connInfo struct {
	state    atomic.Int32
	since    atomic.Int64 // the watcher's clock at the last state change
	loopback bool         // the peer, checked once per connection
}

func (i *connInfo) set(state int32, now int64) {
	i.state.Store(state)
	i.since.Store(now)
}

type connKey struct{}

// connWatch tracks a server's connections and closes those past a limit.
type connWatch struct {
	conns sync.Map // *watchedConn → struct{}: only for the sweep
	limit [3]time.Duration
	// clock is the time in unix nanoseconds, advanced by the watcher each
	// tick: limits are enforced to a tick anyway, so state changes (three
	// a request) read it instead of the system clock.
	clock atomic.Int64
}

func newConnWatch(budget time.Duration) *connWatch {
	w := &connWatch{limit: [3]time.Duration{idleTimeout, headerTimeout, budget + writeSlack}}
	w.clock.Store(time.Now().UnixNano())
	return w
}

func (w *connWatch) now() int64 { return w.clock.Load() }

// watchedConn notes when a request starts arriving: the first bytes read
// on an idle connection.
type watchedConn struct {
	net.Conn
	info *connInfo
	w    *connWatch
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.info.state.Load() == connIdle {
		c.info.set(connReading, c.w.now())
	}
	return n, err
}

type watchedListener struct {
	net.Listener
	w *connWatch
}

func (l watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	info := &connInfo{loopback: loopbackPeer(c.RemoteAddr().String())}
	info.set(connIdle, l.w.now())
	wc := &watchedConn{Conn: c, info: info, w: l.w}
	l.w.conns.Store(wc, struct{}{})
	return wc, nil
}

// install hooks w into srv, wraps its handler, and returns ln watched.
func (w *connWatch) install(srv *http.Server, ln net.Listener) net.Listener {
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if wc, ok := c.(*watchedConn); ok {
			return context.WithValue(ctx, connKey{}, wc.info)
		}
		return ctx
	}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		wc, ok := c.(*watchedConn)
		if !ok {
			return
		}
		switch st {
		case http.StateIdle:
			wc.info.set(connIdle, w.now())
		case http.StateHijacked, http.StateClosed:
			w.conns.Delete(wc)
		}
	}
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if info, ok := r.Context().Value(connKey{}).(*connInfo); ok {
			info.set(connServing, w.now())
		}
		next.ServeHTTP(rw, r)
	})
	return watchedListener{Listener: ln, w: w}
}

// run closes connections past their limit every tick until ctx ends.
func (w *connWatch) run(ctx context.Context) {
	t := time.NewTicker(watchTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			w.clock.Store(now.UnixNano())
			w.sweep()
		}
	}
}

func (w *connWatch) sweep() {
	now := w.now()
	w.conns.Range(func(k, _ any) bool {
		wc := k.(*watchedConn)
		if time.Duration(now-wc.info.since.Load()) > w.limit[wc.info.state.Load()] {
			wc.Close()
		}
		return true
	})
}

// peerIsLoopback reports the request's peer as checked when its connection
// was accepted, or parses RemoteAddr for a request from elsewhere (tests).
func peerIsLoopback(r *http.Request) bool {
	if info, ok := r.Context().Value(connKey{}).(*connInfo); ok {
		return info.loopback
	}
	return loopbackPeer(r.RemoteAddr)
}
