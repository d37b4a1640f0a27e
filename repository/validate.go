package repository

import (
	"bytes"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on identifiers and scopes; the schema holds the same bounds.
const (
	MaxIDBytes       = 255
	MaxReasonBytes   = 256
	MaxScopeTokens   = 256
	MaxScopeTokenLen = 256
)

// validateID accepts a client or user identifier: 1–255 bytes of valid UTF-8 without control
// characters (PostgreSQL's text cannot hold NUL in any case).
func validateID(field, v string) error {
	switch {
	case v == "":
		return inputError(field, "empty")
	case len(v) > MaxIDBytes:
		return inputError(field, "longer than 255 bytes")
	}
	return validateText(field, v)
}

func validateReason(v string) error {
	switch {
	case v == "":
		return inputError("reason", "empty")
	case len(v) > MaxReasonBytes:
		return inputError("reason", "longer than 256 bytes")
	}
	return validateText("reason", v)
}

func validateText(field, v string) error {
	if !utf8.ValidString(v) {
		return inputError(field, "not valid UTF-8")
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return inputError(field, "contains a control character")
		}
	}
	return nil
}

// normalizeScope checks each scope token against RFC 6749 §3.3 (scope-token = 1*NQCHAR, printable
// ASCII except space, '"' and '\') and drops repeats, keeping the first order.
func normalizeScope(scope []string) ([]string, error) {
	if len(scope) > MaxScopeTokens {
		return nil, inputError("scope", "more than 256 scope tokens")
	}
	out := make([]string, 0, len(scope))
	seen := make(map[string]struct{}, len(scope))
	for _, tok := range scope {
		if tok == "" {
			return nil, inputError("scope", "empty scope token")
		}
		if len(tok) > MaxScopeTokenLen {
			return nil, inputError("scope", "scope token longer than 256 bytes")
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				return nil, inputError("scope", "scope token has a character outside RFC 6749 §3.3")
			}
		}
		if _, dup := seen[tok]; dup {
			continue
		}
		seen[tok] = struct{}{}
		out = append(out, tok)
	}
	return out, nil
}

func validateTTL(field string, d time.Duration) error {
	switch {
	case d <= 0:
		return inputError(field, "not positive")
	case d < time.Second:
		return inputError(field, "shorter than one second")
	case d > MaxTTL:
		return inputError(field, "longer than ten years")
	}
	return nil
}

// validateThumbprint accepts a key thumbprint as RFC 9449 (jkt) and RFC 8705 (x5t#S256) send it:
// base64url without padding; empty means none.
func validateThumbprint(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 128 {
		return inputError("sender_thumbprint", "longer than 128 characters")
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return inputError("sender_thumbprint", "not base64url")
		}
	}
	return nil
}

// isSubset reports whether every scope token of sub is in of.
func isSubset(sub, of []string) bool {
	for _, s := range sub {
		if !slices.Contains(of, s) {
			return false
		}
	}
	return true
}

// MaxURIBytes bounds redirect URIs, return targets and resource indicators.
const MaxURIBytes = 2048

func validateURI(field, v string) error {
	switch {
	case v == "":
		return inputError(field, "empty")
	case len(v) > MaxURIBytes:
		return inputError(field, "longer than 2048 bytes")
	}
	return validateText(field, v)
}

// validateRedirectURI: an absolute URI without a fragment (RFC 6749 §3.1.2); custom schemes of
// native apps (RFC 8252 §7.1) included. It is compared byte for byte, never normalized.
func validateRedirectURI(v string) error {
	if err := validateURI("redirect_uri", v); err != nil {
		return err
	}
	u, err := url.Parse(v)
	if err != nil || !u.IsAbs() || strings.Contains(v, "#") {
		return inputError("redirect_uri", "not an absolute URI without a fragment")
	}
	return nil
}

// validateResources checks RFC 8707 resource indicators: absolute URIs without a fragment.
func validateResources(resources []string) ([]string, error) {
	if len(resources) > 32 {
		return nil, inputError("resource", "more than 32 resources")
	}
	for _, r := range resources {
		if err := validateURI("resource", r); err != nil {
			return nil, err
		}
		u, err := url.Parse(r)
		if err != nil || !u.IsAbs() || u.Fragment != "" || strings.Contains(r, "#") {
			return nil, inputError("resource", "not an absolute URI without a fragment")
		}
	}
	if resources == nil {
		resources = []string{}
	}
	return resources, nil
}

// MaxJSONBytes bounds the JSON a code or state carries for the service.
const MaxJSONBytes = 16 << 10

// validateJSON accepts valid JSON in valid UTF-8 without a NUL byte, at most MaxJSONBytes. The
// text is stored and returned byte for byte.
func validateJSON(field string, v json.RawMessage) (string, error) {
	switch {
	case len(v) == 0:
		return "{}", nil
	case len(v) > MaxJSONBytes:
		return "", inputError(field, "larger than 16 KiB")
	case !utf8.Valid(v) || !json.Valid(v) || bytes.IndexByte(v, 0) >= 0:
		return "", inputError(field, "not valid JSON in UTF-8")
	}
	return string(v), nil
}

// firstError returns the first error that is not nil, in the order of the checks.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
