// Command fetch is a stand-in for `curl -sS URL` on machines without curl,
// used by the demo: it prints the body and fails on a non-2xx status.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: fetch URL")
		os.Exit(2)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(os.Stderr, "\nfetch: HTTP %d\n", resp.StatusCode)
		os.Exit(1)
	}
}
