//go:build cdhproxy_fakehw

package main

import (
	"os"

	"github.com/cdh-proxy/cdh-proxy/attester/detect"
	"github.com/cdh-proxy/cdh-proxy/test/fakehw"
)

// hardwareEnv, in test builds only, replaces configfs-tsm with the simulator
// saved in $CDH_PROXY_FAKEHW_DIR for $CDH_PROXY_FAKEHW (tdx or snp), and
// hides the real /dev. Everything above configfs-tsm runs as in production.
func hardwareEnv(env detect.Env) (detect.Env, error) {
	tee := os.Getenv("CDH_PROXY_FAKEHW")
	if tee == "" {
		return env, nil
	}
	fs, err := fakehw.LoadConfigFS(tee, os.Getenv("CDH_PROXY_FAKEHW_DIR"))
	if err != nil {
		return env, err
	}
	env.TSM = fs
	env.DevDir = os.TempDir() + "/cdh-proxy-fakehw-no-dev"
	if env.Azure.TPM == "" { // never the test machine's own TPM
		env.Azure.TPM = env.DevDir + "/tpmrm0"
	}
	return env, nil
}
