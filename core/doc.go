// Package core is what every front end of cdh-proxy serves: the cached
// secret service (resources, KBS plugins, sealed secrets), attestation
// (evidence, token) as functions, and the one classification of failures
// into statuses. The front ends (proxy/httpapi, proxy/ttrpcapi,
// proxy/forward) import core and never each other.
package core
