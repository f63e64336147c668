package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/cache"
	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/eventlog"
	"github.com/cdh-proxy/cdh-proxy/metrics"
)

func post(h http.Handler, target, body string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(body))
	req.RemoteAddr, req.Host = "127.0.0.1:1", "127.0.0.1:8006"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// POST /aa/aael answers as api-server-rest, refuses what the log must not
// take, and keeps the guest components' own domain to them.
func TestAAEL(t *testing.T) {
	c, err := cache.New(cache.Config{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var got []eventlog.Event
	result, failure := eventlog.OK, error(nil)
	measure := func(_ context.Context, ev eventlog.Event) (eventlog.Result, error) {
		if err := ev.Validate(); err != nil {
			return eventlog.OK, err
		}
		got = append(got, ev)
		return result, failure
	}
	newHandler := func(m eventlog.MeasureFunc, f core.Features) http.Handler {
		h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{}}, Features: f,
			Evidence: func(context.Context, []byte) (json.RawMessage, error) { return nil, nil }, Token: func(context.Context) (string, []byte, error) { return "", nil, nil },
			Measure: m})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := newHandler(measure, core.Features{Attestation: true})
	for _, tc := range []struct {
		name, body string
		result     eventlog.Result
		failure    error
		status     int
		want       string
	}{
		{"ok", `{"domain":"example.com","operation":"Deploy","content":"{\"v\":1}"}`, eventlog.OK, nil, 200, `{"success":"true"}`},
		{"unsupported", `{"domain":"d","operation":"o","content":"c"}`, eventlog.NotSupported, nil, 200, `"The platform does not support runtime measurement"`},
		{"not enabled", `{"domain":"d","operation":"o","content":"c"}`, eventlog.NotEnabled, nil, 200, `"Attestation Agent does not enable eventlog recording"`},
		{"unknown fields ignored", `{"domain":"d","operation":"o","content":"c","x":1}`, eventlog.OK, nil, 200, `{"success":"true"}`},
		{"not JSON", `domain=d`, eventlog.OK, nil, 400, "all strings"},
		{"missing content", `{"domain":"d","operation":"o"}`, eventlog.OK, nil, 400, "all strings"},
		{"number", `{"domain":"d","operation":"o","content":1}`, eventlog.OK, nil, 400, "all strings"},
		{"too big", `{"domain":"d","operation":"o","content":"` + strings.Repeat("x", 70<<10) + `"}`, eventlog.OK, nil, 400, "64 KiB"},
		{"space in domain", `{"domain":"a b","operation":"o","content":"c"}`, eventlog.OK, nil, 400, "event domain has whitespace"},
		{"reserved domain", `{"domain":"github.com/confidential-containers","operation":"PullImage","content":"{}"}`, eventlog.OK, nil, 403, "reserved-domain"},
		{"reserved sub-domain", `{"domain":"github.com/confidential-containers/x","operation":"o","content":"c"}`, eventlog.OK, nil, 403, "reserved-domain"},
		{"no AA", `{"domain":"d","operation":"o","content":"c"}`, eventlog.OK, fmt.Errorf("%w at /x", eventlog.ErrNoAgent), 503, "AA socket"},
		{"register failure", `{"domain":"d","operation":"o","content":"c"}`, eventlog.OK, errors.New("RTMR write failed"), 500, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			result, failure = tc.result, tc.failure
			rec := post(h, "/aa/aael", tc.body)
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("%d %s, want %d with %q", rec.Code, rec.Body, tc.status, tc.want)
			}
		})
	}
	if len(got) != 6 || got[0].Content != `{"v":1}` {
		t.Errorf("recorded %+v", got)
	}
	// A browser cannot post events (the guard), nil Measure is a disabled
	// log, and the route is off with the attestation feature.
	if rec := post(h, "/aa/aael", `{"domain":"d","operation":"o","content":"c"}`, "Origin", "https://evil.example"); rec.Code != 403 {
		t.Errorf("cross-origin post: %d", rec.Code)
	}
	if rec := post(newHandler(nil, core.Features{Attestation: true}), "/aa/aael", `{"domain":"d","operation":"o","content":"c"}`); !strings.Contains(rec.Body.String(), "does not enable eventlog") {
		t.Errorf("nil Measure: %d %s", rec.Code, rec.Body)
	}
	if rec := post(newHandler(measure, core.Features{Resource: true}), "/aa/aael", `{}`); rec.Code != 404 || !strings.Contains(rec.Body.String(), "feature-disabled") {
		t.Errorf("feature off: %d %s", rec.Code, rec.Body)
	}
}

// Successful attestation-route answers are counted, as the README's
// metrics table says (evidence and token were not).
func TestAttestationRoutesCounted(t *testing.T) {
	c, _ := cache.New(cache.Config{TTL: time.Minute})
	m, err := metrics.New(metrics.StatsSource{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Resources: &core.Secrets{Cache: c, KBS: &fakeKBS{}}, Features: core.Features{Attestation: true}, Metrics: m,
		Evidence: func(context.Context, []byte) (json.RawMessage, error) { return json.RawMessage(`{}`), nil },
		Token:    func(context.Context) (string, []byte, error) { return "t", []byte("k"), nil },
		Measure:  func(context.Context, eventlog.Event) (eventlog.Result, error) { return eventlog.OK, nil }})
	if err != nil {
		t.Fatal(err)
	}
	serve(h, "127.0.0.1:1", "/aa/evidence?runtime_data=x")
	serve(h, "127.0.0.1:1", "/aa/token?token_type=kbs")
	post(h, "/aa/aael", `{"domain":"d","operation":"o","content":"c"}`)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, route := range []string{"evidence", "token", "aael"} {
		if want := `cdh_proxy_http_requests_total{route="` + route + `",status="200"} 1`; !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
