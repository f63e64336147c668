package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

// KBS plugins other than resource, end to end: the HTTP route,
// CDH GetResource with kbs+<plugin>:///, per-plugin caching, statuses.
func TestPlugins(t *testing.T) {
	k := newKBS(t, kbs.Config{Policy: kbs.Policy{DenyPlugins: []string{"sample"}}})
	_, cdhSock, _ := sockets(t)
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cdh-socket", "unix://"+cdhSock)
	// The encrypting plugin: decrypted, query forwarded, a new answer per call.
	first := p.get("/cdh/plugin/credential/nodes/pod-a?name=pod-a&ttl=1h")
	second := p.get("/cdh/plugin/credential/nodes/pod-a?name=pod-a&ttl=1h")
	for _, r := range []reply{first, second} {
		if r.Status != 200 || !strings.HasSuffix(r.Body, " for /nodes/pod-a?name=pod-a&ttl=1h") || r.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("credential plugin: %d %q X-Cache %q", r.Status, r.Body, r.Header.Get("X-Cache"))
		}
	}
	if first.Body == second.Body {
		t.Fatalf("plugin answers cached by default: %q twice", first.Body)
	}
	for _, tc := range []struct {
		path, typ string
		status    int
	}{
		{"/cdh/plugin/sample/hello", "urn:cdh-proxy:kbs-policy-denied", 403},
		{"/cdh/plugin/nebula-ca/credential", "urn:cdh-proxy:kbs-plugin-not-found", 404},
		{"/cdh/plugin/credential/missing", "urn:cdh-proxy:kbs-not-found", 404},
		{"/cdh/plugin/credential/a%2F..%2Fb", "urn:cdh-proxy:bad-path", 400},
		{"/cdh/plugin/attest/x", "urn:cdh-proxy:bad-path", 400},
	} {
		r := p.get(tc.path)
		var prob problemBody
		if err := json.Unmarshal([]byte(r.Body), &prob); err != nil || r.Status != tc.status || prob.Type != tc.typ {
			t.Errorf("%s: %d %s, want %d %s", tc.path, r.Status, r.Body, tc.status, tc.typ)
		}
	}
	kc := dialKata(t, cdhSock)
	if got, err := kc.getResource("kbs+credential:///nodes/pod-a?name=pod-a"); err != nil || !strings.HasSuffix(string(got), " for /nodes/pod-a?name=pod-a") {
		t.Fatalf("GetResource kbs+credential: %q %v", got, err)
	}
	for uri, want := range map[string]codes.Code{
		"kbs+nebula-ca:///credential": codes.NotFound,
		"kbs+sample:///hello":         codes.PermissionDenied,
		"kbs+credential:///a/../b":    codes.InvalidArgument,
	} {
		if _, err := kc.getResource(uri); status.Code(err) != want {
			t.Errorf("GetResource(%q) = %v, want %v", uri, err, want)
		}
	}
	if c := k.Counts(); c.Handshakes != 1 {
		t.Fatalf("%d handshakes: resources and plugins share one token", c.Handshakes)
	}
}

func TestPluginPlainAnswerAndOptInCache(t *testing.T) {
	k := newKBS(t, kbs.Config{})
	p := startProxy(t, k, nil, "--kbs-url", k.URL, "--cache-plugin", "credential")
	if r := p.get("/cdh/plugin/sample/hello"); r.Status != 200 || r.Body != "sample plugin response" {
		t.Fatalf("plain plugin: %d %q", r.Status, r.Body)
	}
	a, b := p.get("/cdh/plugin/credential/x"), p.get("/cdh/plugin/credential/x")
	if a.Body != b.Body || b.Header.Get("X-Cache") != "HIT" {
		t.Fatalf("--cache-plugin credential: %q then %q (X-Cache %q)", a.Body, b.Body, b.Header.Get("X-Cache"))
	}
	if r := p.get("/cdh/plugin/credential/x", "Cache-Control", "no-cache"); r.Body == a.Body || r.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("no-cache on a cached plugin: %q", r.Body)
	}
	if c := k.Counts(); c.Plugin != 3 {
		t.Fatalf("plugin GETs at the KBS: %d, want 3 (sample, credential, no-cache refetch)", c.Plugin)
	}
	out, err := execProxy("serve", "--attester", "sample", "--kbs-url", k.URL, "--cache-plugin", "../x")
	if err == nil || !strings.Contains(out, "--cache-plugin") {
		t.Fatalf("bad --cache-plugin: %v %s", err, out)
	}
}
