package forward

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/cdh-proxy/cdh-proxy/core"
	"github.com/cdh-proxy/cdh-proxy/internal/unixsock"
	"github.com/cdh-proxy/cdh-proxy/kbsclient"
	"github.com/cdh-proxy/cdh-proxy/proxy/ttrpcapi"
	"github.com/cdh-proxy/cdh-proxy/resource"
)

type fakeSecrets struct{}

func (fakeSecrets) Fetch(_ context.Context, uri string) ([]byte, error) {
	switch uri {
	case "kbs:///default/akv/coco_one":
		return []byte("a secret"), nil
	case "kbs+credential:///a/b?x=1":
		return []byte("per-call credential"), nil
	}
	return nil, &kbsclient.Error{Kind: kbsclient.PluginNotFound, KBSType: "PluginNotFound"}
}

func (fakeSecrets) Unseal(context.Context, string) ([]byte, error) { return nil, errors.New("unused") }

// daemons serves a CDH and an AA, as separately installed
// confidential-data-hub and attestation-agent processes would, on real
// sockets under dir; start delays it so the forwarder can be seen to wait.
func daemons(t *testing.T, dir string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var done []chan error
	for name, register := range map[string]func(*ttrpc.Server) error{
		"cdh.sock": func(s *ttrpc.Server) error {
			return ttrpcapi.RegisterCDH(s, ttrpcapi.CDHConfig{Secrets: fakeSecrets{}})
		},
		"aa.sock": func(s *ttrpc.Server) error {
			return ttrpcapi.RegisterAA(s, ttrpcapi.AAConfig{Tee: "snp",
				Evidence: func(_ context.Context, rd []byte) (json.RawMessage, error) {
					return json.RawMessage(`{"rd":"` + string(rd) + `"}`), nil
				},
				Token: func(context.Context) (string, []byte, error) { return "tok", []byte("PEM"), nil }})
		},
	} {
		srv, err := ttrpcapi.NewServer()
		if err != nil {
			t.Fatal(err)
		}
		if err := register(srv); err != nil {
			t.Fatal(err)
		}
		ln, err := unixsock.Listen("unix://" + filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		d := make(chan error, 1)
		done = append(done, d)
		go func() { d <- ttrpcapi.Serve(ctx, ln, srv, time.Second) }()
	}
	t.Cleanup(func() {
		cancel()
		for _, d := range done {
			<-d
		}
	})
}

func TestForwarding(t *testing.T) {
	dir, err := os.MkdirTemp("", "fw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cdhR, err := NewRemote("unix://" + filepath.Join(dir, "cdh.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer cdhR.Close()
	aaR, err := NewRemote("unix://" + filepath.Join(dir, "aa.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer aaR.Close()
	cdh, aa := RemoteCDH{cdhR}, RemoteAA{aaR}
	ctx := context.Background()
	coco := resource.Path{Repo: "default", Type: "akv", Tag: "coco_one"}

	// ASR may start before the others: a clear 503 until they are there.
	_, _, err = cdh.Resource(ctx, coco, false)
	if p := core.Classify(err); p.Status != 503 {
		t.Fatalf("CDH not up yet: %v → %d", err, p.Status)
	}
	if _, err := aa.Evidence(ctx, nil); core.Classify(err).Status != 503 {
		t.Fatalf("AA not up yet: %v", err)
	}
	if _, _, err := aa.Token(ctx); core.Classify(err).Status != 503 {
		t.Fatalf("AA not up yet: %v", err)
	}
	if _, _, err := cdh.Plugin(ctx, resource.Plugin{Name: "x"}, false); core.Classify(err).Status != 503 {
		t.Fatalf("CDH not up yet: %v", err)
	}
	daemons(t, dir)

	v, _, err := cdh.Resource(ctx, coco, false)
	if err != nil || string(v.Bytes()) != "a secret" {
		t.Fatalf("Resource: %v", err)
	}
	v.Release()
	v, _, err = cdh.Plugin(ctx, resource.Plugin{Name: "credential", Path: "a/b", Query: "x=1"}, false)
	if err != nil || string(v.Bytes()) != "per-call credential" {
		t.Fatalf("Plugin: %v", err)
	}
	v.Release()
	_, _, err = cdh.Plugin(ctx, resource.Plugin{Name: "nope", Path: "a"}, false)
	if p := core.Classify(err); p.Status != 404 {
		t.Fatalf("missing plugin through the CDH: %v → %+v", err, p)
	}
	ev, err := aa.Evidence(ctx, []byte("hi"))
	if err != nil || string(ev) != `{"rd":"hi"}` {
		t.Fatalf("Evidence: %s %v", ev, err)
	}
	tok, key, err := aa.Token(ctx)
	if err != nil || tok != "tok" || string(key) != "PEM" {
		t.Fatalf("Token: %q %q %v", tok, key, err)
	}
	if _, err := NewRemote("relative.sock"); err == nil {
		t.Fatal("relative socket accepted")
	}
}
