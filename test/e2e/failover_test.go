package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cdh-proxy/cdh-proxy/internal/testutil"
	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// Several KBS endpoints (repeated --kbs-url), the fault-matrix rows of
// issue 13, against two test KBSes.
func TestKBSFailover(t *testing.T) {
	t.Run("first down at start", func(t *testing.T) {
		b := newKBS(t, kbs.Config{})
		dead := "https://" + deadAddr(t)
		p := startProxy(t, b, nil, "--kbs-url", dead, "--kbs-url", b.URL, "--budget", "10s")
		if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
		if n := metric(t, p, "cdh_proxy_kbs_failovers_total"); n != 1 {
			t.Fatalf("failovers %v", n)
		}
		if metric(t, p, `cdh_proxy_kbs_endpoint_active{kbs="`+b.URL+`"}`) != 1 || metric(t, p, `cdh_proxy_kbs_endpoint_active{kbs="`+dead+`"}`) != 0 {
			t.Fatalf("active endpoint gauge:\n%s", p.get("/metrics").Body)
		}
		p.stop()
		mustContain(t, p.logs.String(), `"msg":"KBS unavailable; failing over","component":"kbsclient","kbs":"`+dead+`","next":"`+b.URL+`"`)
		mustContain(t, p.logs.String(), `"msg":"attested","component":"kbsclient","kbs":"`+b.URL+`"`)
	})
	t.Run("first dies after warm-up", func(t *testing.T) {
		a, b := newKBS(t, kbs.Config{}), newKBS(t, kbs.Config{})
		p := startProxy(t, a, nil, "--kbs-url", a.URL, "--kbs-url", b.URL, "--kbs-cert", b.CAFile, "--cache-ttl", "0")
		if r := p.get(cocoOne); r.Status != 200 {
			t.Fatalf("warm-up: %d %s", r.Status, r.Body)
		}
		a.close()
		for i := range 3 {
			if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
				t.Fatalf("request %d after the first KBS died: %d %s", i, r.Status, r.Body)
			}
		}
		if c := b.Counts(); c.Handshakes != 1 || c.Resource != 3 {
			t.Fatalf("second KBS: %+v (its own token, one GET per request)", c)
		}
	})
	t.Run("all down then stale-if-error", func(t *testing.T) {
		a := newKBS(t, kbs.Config{})
		dead := "https://" + deadAddr(t)
		p := startProxy(t, a, nil, "--kbs-url", a.URL, "--kbs-url", dead, "--stale-if-error", "1h", "--budget", "5s")
		if r := p.get(cocoOne); r.Status != 200 {
			t.Fatalf("warm-up: %d", r.Status)
		}
		a.close()
		r := p.get(cocoOne, "Cache-Control", "no-cache")
		if r.Status != 200 || r.Body != "a secret" || r.Header.Get("X-Cache") != "STALE" {
			t.Fatalf("every KBS down, stale copy expected: %d %q X-Cache %q", r.Status, r.Body, r.Header.Get("X-Cache"))
		}
		r = p.get("/cdh/resource/default/akv/coco_two")
		var prob problemBody
		if err := json.Unmarshal([]byte(r.Body), &prob); err != nil || r.Status != 503 || prob.Type != "urn:cdh-proxy:kbs-unavailable" {
			t.Fatalf("every KBS down, nothing cached: %d %s", r.Status, r.Body)
		}
	})
	t.Run("flapping", func(t *testing.T) {
		a, b := newKBS(t, kbs.Config{}), newKBS(t, kbs.Config{})
		p := startProxy(t, a, nil, "--kbs-url", a.URL, "--kbs-url", b.URL, "--kbs-cert", b.CAFile, "--cache-ttl", "0")
		for i := range 8 {
			if i%2 == 1 {
				a.SetFaults(kbs.Faults{Status: http.StatusServiceUnavailable})
			} else {
				a.SetFaults(kbs.Faults{})
			}
			if r := p.get(cocoOne); r.Status != 200 || r.Body != "a secret" {
				t.Fatalf("request %d: %d %s", i, r.Status, r.Body)
			}
		}
		// One move to b; a is passed over for the cool-off (60 s), so it
		// does not keep costing requests while it flaps.
		if n := metric(t, p, "cdh_proxy_kbs_failovers_total"); n != 1 {
			t.Fatalf("failovers %v, want 1", n)
		}
	})
	t.Run("denial and 404 never fail over", func(t *testing.T) {
		a := newKBS(t, kbs.Config{Policy: kbs.Policy{Allow: []string{"default/akv/coco_two"}}})
		b := newKBS(t, kbs.Config{})
		p := startProxy(t, a, nil, "--kbs-url", a.URL, "--kbs-url", b.URL, "--kbs-cert", b.CAFile)
		if r := p.get(cocoOne); r.Status != 403 {
			t.Fatalf("denied: %d %s", r.Status, r.Body)
		}
		if r := p.get("/cdh/resource/default/akv/coco_three"); r.Status != 403 {
			t.Fatalf("denied (missing): %d %s", r.Status, r.Body)
		}
		if c := b.Counts(); c.Auth != 0 {
			t.Fatalf("second KBS was asked: %+v", c)
		}
	})
}

func TestProtocolVersionMismatch(t *testing.T) {
	k := newKBS(t, kbs.Config{ProtocolVersion: "0.5.0"})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--budget", "5s")
	r := p.get(cocoOne)
	var prob problemBody
	if err := json.Unmarshal([]byte(r.Body), &prob); err != nil || r.Status != 503 || prob.Type != "urn:cdh-proxy:kbs-protocol-mismatch" {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	for _, want := range []string{"cdh-proxy speaks KBS protocol 0.4.0", "expect =0.5.0 while the request is 0.4.0"} {
		mustContain(t, r.Body, want)
	}
	testutil.Eventually(t, 10*time.Second, "mismatch metric", func() bool { return metric(t, p, "cdh_proxy_kbs_protocol_mismatch_total") >= 1 })
	p.stop()
	logs := p.logs.String()
	if !strings.Contains(logs, `"level":"ERROR","msg":"KBS protocol version mismatch","component":"kbsclient","kbs":"`+k.URL+`","ours":"0.4.0","kbs_answer":`) {
		t.Fatalf("no mismatch log line naming both sides:\n%s", logs)
	}
}
