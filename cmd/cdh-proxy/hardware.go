//go:build !cdhproxy_fakehw

package main

import "github.com/cdh-proxy/cdh-proxy/attester/detect"

// hardwareEnv is the real machine. (Builds tagged cdhproxy_fakehw, used only
// by the end-to-end tests, substitute simulated hardware: fakehw.go.)
func hardwareEnv(env detect.Env) (detect.Env, error) { return env, nil }
