// Command testkbs runs the strict test KBS of package test/kbs for demos and
// manual testing. It is not part of cdh-proxy and must never be deployed.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cdh-proxy/cdh-proxy/test/kbs"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	repo := flag.String("repo-dir", "", "resource store directory (required)")
	layout := flag.String("layout", "localfs", "store layout: localfs (current Trustee: <dir>/repository/<repo>\\x2F<type>\\x2F<tag>, symlinks followed) or tree (Trustee <= v0.18: <dir>/<repo>/<type>/<tag>, CSI mounts allowed)")
	plugins := flag.Bool("plugins", true, "serve the sample (plain) and credential (encrypting) plugins besides resource")
	protocol := flag.String("protocol-version", "0.4.0", "the KBS protocol version accepted at auth (another plays a newer or older Trustee)")
	denyPlugin := flag.String("deny-plugin", "", "resource policy: deny this plugin")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a freshly generated CA")
	caOut := flag.String("ca-out", "", "with --tls: write the CA certificate (PEM) here")
	addrFile := flag.String("addr-file", "", "write the base URL here once listening")
	tokenTTL := flag.Duration("token-lifetime", kbs.DefaultTokenLifetime, "lifetime of issued tokens")
	denySample := flag.Bool("deny-sample", false, "deny sample evidence at resource access (Trustee's default policy)")
	admin := flag.String("admin-token", "", "enable POST resource/… with this Bearer token")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *repo == "" {
		fmt.Fprintln(os.Stderr, "testkbs: --repo-dir is required")
		os.Exit(2)
	}
	var store kbs.Store = kbs.TreeStore{Dir: *repo}
	if *layout == "localfs" {
		store = kbs.LocalFsStore{Dir: *repo}
	} else if *layout != "tree" {
		fmt.Fprintf(os.Stderr, "testkbs: unknown --layout %q\n", *layout)
		os.Exit(2)
	}
	cfg := kbs.Config{Store: store, TokenLifetime: *tokenTTL, AdminToken: *admin,
		Policy: kbs.Policy{DenySample: *denySample}, Logger: log, ProtocolVersion: *protocol}
	if *plugins {
		cfg.Plugins = kbs.DefaultPlugins()
	}
	if *denyPlugin != "" {
		cfg.Policy.DenyPlugins = []string{*denyPlugin}
	}
	srv, err := kbs.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testkbs:", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testkbs:", err)
		os.Exit(1)
	}
	scheme := "http"
	if *useTLS {
		cert, caPEM, err := kbs.NewTLS()
		if err != nil {
			fmt.Fprintln(os.Stderr, "testkbs:", err)
			os.Exit(1)
		}
		if *caOut != "" {
			if err := os.WriteFile(*caOut, caPEM, 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "testkbs:", err)
				os.Exit(1)
			}
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	base := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(base+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testkbs:", err)
			os.Exit(1)
		}
	}
	log.Info("test KBS listening", "url", base, "repo_dir", *repo, "layout", *layout)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "testkbs:", err)
		os.Exit(1)
	}
}
