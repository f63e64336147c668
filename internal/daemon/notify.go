package daemon

import (
	"net"
	"os"
)

// SDNotify tells systemd (Type=notify) that cdh-proxy is ready: every
// listener and socket is bound. A no-op without $NOTIFY_SOCKET; failures
// only cost readiness reporting, so they are returned for logging.
func SDNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract namespace
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
