package repository

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
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

// Bounds on a grant's claims and audiences; the schema holds the same bounds.
const (
	MaxAudiences     = 32
	MaxAudienceBytes = 512
	MaxAMRValues     = 16
	MaxAMRBytes      = 64
	MaxUserAgent     = 512
)

// Claims are what a grant records about the authentication behind it and the session it is: set
// when the grant starts (IssueRequest, or CodeRequest for the family its code produces) and
// returned by Rotate, Lookup, Introspect and ActiveFamilies. None of them may be a secret.
type Claims struct {
	// AuthTime is when the user authenticated (OIDC auth_time), kept to the microsecond.
	AuthTime *time.Time
	// ACR and AMR are the authentication context class and methods (OIDC acr, amr).
	ACR string
	AMR []string
	// SessionID is the OpenID Connect session id ("sid"), for back-channel logout: RevokeFamilies
	// returns the ones it ended.
	SessionID string
	// UserAgent, IP and Label describe the session for a "your devices" page. Rotate updates
	// UserAgent and IP when RotateRequest carries them.
	UserAgent string
	IP        string
	Label     string
}

// validate checks claims against their bounds: printable text, an IP address in a form
// net/netip parses, and no more than the schema holds.
func (c Claims) validate() error {
	short := func(field, v string, n int) error {
		if len(v) > n {
			return inputError(field, "longer than "+strconv.Itoa(n)+" bytes")
		}
		return validateText(field, v)
	}
	if err := firstError(short("acr", c.ACR, 255), short("sid", c.SessionID, 255),
		short("user_agent", c.UserAgent, MaxUserAgent), short("label", c.Label, 255),
		validateIP(c.IP)); err != nil {
		return err
	}
	if len(c.AMR) > MaxAMRValues {
		return inputError("amr", "more than 16 values")
	}
	for _, m := range c.AMR {
		if m == "" || len(m) > MaxAMRBytes || !printableASCII(m) {
			return inputError("amr", "a value that is not 1-64 printable ASCII characters")
		}
	}
	if c.AuthTime != nil && (c.AuthTime.IsZero() || c.AuthTime.Year() < 1970 || c.AuthTime.Year() > 9999) {
		return inputError("auth_time", "outside 1970..9999")
	}
	return nil
}

func validateIP(v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 45 {
		return inputError("ip", "longer than 45 bytes")
	}
	addr, err := netip.ParseAddr(v)
	switch {
	case err != nil:
		return inputError("ip", "not an IP address")
	case addr.Zone() != "" || !printableASCII(v):
		// A zone may hold any bytes; an address of a session needs none.
		return inputError("ip", "an IP address with a zone")
	}
	return nil
}

func printableASCII(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// validateAudience checks audience values (RFC 7519 "aud", RFC 8707 resources): 1–512 printable
// ASCII characters without spaces each, at most 32, repeats dropped.
func validateAudience(field string, aud []string) ([]string, error) {
	if len(aud) > MaxAudiences {
		return nil, inputError(field, "more than 32 audiences")
	}
	out := make([]string, 0, len(aud))
	for _, a := range aud {
		if a == "" || len(a) > MaxAudienceBytes || !printableASCII(a) {
			return nil, inputError(field, "a value that is not 1-512 printable ASCII characters without spaces")
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// pgClaims are claims as statement parameters.
type pgClaims struct {
	authTime                       *time.Time
	acr, sid, userAgent, ip, label *string
	amr                            []string
}

func (c Claims) params() pgClaims {
	p := pgClaims{
		acr: optionalText(c.ACR), sid: optionalText(c.SessionID), userAgent: optionalText(c.UserAgent),
		ip: optionalText(c.IP), label: optionalText(c.Label), amr: c.AMR,
	}
	if c.AuthTime != nil {
		t := c.AuthTime.Truncate(time.Microsecond)
		p.authTime = &t
	}
	return p
}

func claimsOf(authTime *time.Time, acr *string, amr []string, sid, userAgent, ip, label *string) Claims {
	return Claims{
		AuthTime: utcPtr(authTime), ACR: deref(acr), AMR: amr, SessionID: deref(sid),
		UserAgent: deref(userAgent), IP: deref(ip), Label: deref(label),
	}
}
