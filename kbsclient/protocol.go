package kbsclient

import "encoding/json"

// ProtocolVersion is the only version the Trustee KBS accepts (semver "=0.4.0").
const ProtocolVersion = "0.4.0"

// Error type URIs sent by the KBS in its error bodies (spec: "Errors").
const (
	errTypePrefix      = "https://github.com/confidential-containers/kbs/errors/"
	TypeTokenNotFound  = "TokenNotFound"
	TypeTokenVerifier  = "TokenVerifierError"
	TypePolicyDeny     = "PolicyDeny"
	TypePluginInternal = "PluginInternalError"
	TypePluginNotFound = "PluginNotFound"
	TypeInvalidPath    = "InvalidRequestPath"
	TypeJWE            = "JweError"
	TypeAttestation    = "AttestationError"
)

// authRequest is the body of POST /kbs/v0/auth. Outer keys are kebab-case.
type authRequest struct {
	Version     string          `json:"version"`
	Tee         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"` // required: null or any JSON
}

// supportedHashes is what guest-components advertises; a KBS fronted by
// Intel Trust Authority picks one of them for report_data.
var supportedHashesJSON = json.RawMessage(`{"supported-hash-algorithms":["sha256","sha384","sha512"]}`)

// challenge is the 200 body of POST /kbs/v0/auth.
type challenge struct {
	Nonce       string          `json:"nonce"`        // opaque; echoed verbatim
	ExtraParams json.RawMessage `json:"extra-params"` // "" from Trustee; maybe {"selected-hash-algorithm":…}
}

// attestRequest is the body of POST /kbs/v0/attest.
type attestRequest struct {
	RuntimeData runtimeData `json:"runtime-data"`
	TeeEvidence teeEvidence `json:"tee-evidence"`
	InitData    *initData   `json:"init-data,omitempty"`
}

type runtimeData struct {
	Nonce     string          `json:"nonce"`
	TeePubKey json.RawMessage `json:"tee-pubkey"`
}

// teeEvidence keys are snake_case, unlike the outer object.
type teeEvidence struct {
	PrimaryEvidence    json.RawMessage `json:"primary_evidence"`
	AdditionalEvidence string          `json:"additional_evidence"` // a JSON string, "" when none
}

type initData struct {
	Format string `json:"format"` // always "toml"
	Body   string `json:"body"`   // the exact bytes of the initdata file
}

// attestResponse is the 200 body of POST /kbs/v0/attest.
type attestResponse struct {
	Token string `json:"token"`
}

// errorBody is every KBS error body: {"type":"…/errors/<Variant>","detail":"…"}.
type errorBody struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}
