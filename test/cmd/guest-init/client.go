package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"

	"github.com/cdh-proxy/cdh-proxy/api/aa"
	"github.com/cdh-proxy/cdh-proxy/api/cdh"
)

const clientUsage = `usage: kata-ttrpc get-resource kbs:///repo/type/tag
       kata-ttrpc unseal-secret SEALED
       kata-ttrpc pull-image IMAGE BUNDLE
       kata-ttrpc get-token [kbs]
       kata-ttrpc secure-mount VOLUME_TYPE MOUNT_POINT KEY=VALUE...
`

// client is kata-ttrpc: the calls kata-agent makes on the CDH socket (and
// the AA's GetToken), each on a ttrpc connection to the socket kata uses,
// under kata's deadlines. The result goes to stdout; a failure prints the
// ttrpc status to stderr and exits 1.
func client(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, clientUsage)
		return 2
	}
	sock := cdhSocket
	if args[0] == "get-token" {
		sock = aaSocket
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kata-ttrpc:", err)
		return 1
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := ctx50()
	defer cancel()
	var out []byte
	switch {
	case args[0] == "get-resource" && len(args) == 2:
		var r *cdh.GetResourceResponse
		r, err = cdh.NewGetResourceServiceClient(c).GetResource(ctx, &cdh.GetResourceRequest{ResourcePath: args[1]})
		out = r.GetResource()
	case args[0] == "unseal-secret" && len(args) == 2:
		var r *cdh.UnsealSecretOutput
		r, err = cdh.NewSealedSecretServiceClient(c).UnsealSecret(ctx, &cdh.UnsealSecretInput{Secret: []byte(args[1])})
		out = r.GetPlaintext()
	case args[0] == "pull-image" && len(args) == 3:
		// agent.image_pull_timeout's default.
		pctx, pcancel := context.WithTimeout(context.Background(), 1200*time.Second)
		defer pcancel()
		var r *cdh.ImagePullResponse
		r, err = cdh.NewImagePullServiceClient(c).PullImage(pctx, &cdh.ImagePullRequest{ImageUrl: args[1], BundlePath: args[2]})
		out = []byte(r.GetManifestDigest() + "\n")
	case args[0] == "get-token" && len(args) <= 2:
		typ := "kbs"
		if len(args) == 2 {
			typ = args[1]
		}
		var r *aa.GetTokenResponse
		r, err = aa.NewAttestationAgentServiceClient(c).GetToken(ctx, &aa.GetTokenRequest{TokenType: typ})
		out = r.GetToken()
	case args[0] == "secure-mount" && len(args) >= 3:
		opts := map[string]string{}
		for _, kv := range args[3:] {
			k, v, _ := strings.Cut(kv, "=")
			opts[k] = v
		}
		_, err = cdh.NewSecureMountServiceClient(c).SecureMount(ctx, &cdh.SecureMountRequest{VolumeType: args[1], MountPoint: args[2], Options: opts})
	default:
		fmt.Fprint(os.Stderr, clientUsage)
		return 2
	}
	if err != nil {
		s := status.Convert(err)
		fmt.Fprintf(os.Stderr, "kata-ttrpc %s: %s: %s\n", args[0], s.Code(), s.Message())
		return 1
	}
	os.Stdout.Write(out)
	return 0
}
