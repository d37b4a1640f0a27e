package repository

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// MinPepperBytes is the shortest pepper New accepts: the key of HMAC-SHA-256 should be at least
// as long as its output.
const MinPepperBytes = 32

// PepperEnv is the environment variable PepperFromEnv reads.
const PepperEnv = "OAUTH_AT_REST_PEPPER"

// tokenBytes is the entropy of every minted token: 256 bits from crypto/rand.
const tokenBytes = 32

// tokenLen is the length of a minted token: tokenBytes in unpadded base64url.
var tokenLen = base64.RawURLEncoding.EncodedLen(tokenBytes)

var tokenEncoding = base64.RawURLEncoding.Strict()

// PepperFromEnv reads the pepper from OAUTH_AT_REST_PEPPER, as base64 (standard or URL alphabet,
// padded or not) of at least MinPepperBytes random bytes, for example the output of
// `openssl rand -base64 32`.
func PepperFromEnv() ([]byte, error) {
	v := os.Getenv(PepperEnv)
	if strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("%w: set %s to the base64 of %d or more random bytes", ErrNoPepper, PepperEnv, MinPepperBytes)
	}
	p, err := ParsePepper(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", PepperEnv, err)
	}
	return p, nil
}

// ParsePepper decodes a base64 pepper (standard or URL alphabet, padded or not) and checks its
// length. The error never contains the value.
func ParsePepper(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if p, err := enc.DecodeString(s); err == nil {
			if len(p) < MinPepperBytes {
				return nil, ErrPepperTooShort
			}
			return p, nil
		}
	}
	return nil, inputError("pepper", "not base64")
}

// Secret is a raw credential to hand to a client exactly once. It prints, logs and marshals as
// "[REDACTED]" so that it cannot reach a log line by accident; Reveal returns the value.
type Secret struct{ value string }

// Reveal returns the raw credential, to be written into the token response and nowhere else.
func (s Secret) Reveal() string { return s.value }

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.value == "" }

const redacted = "[REDACTED]"

func (Secret) String() string               { return redacted }
func (Secret) GoString() string             { return redacted }
func (Secret) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
func (Secret) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// digester computes keyed digests of one kind of credential. Each kind has its own key, derived
// from the pepper, so that a digest of one kind can never be confused with another's.
type digester struct{ pool sync.Pool }

func newDigester(pepper []byte, label string) *digester {
	mac := hmac.New(sha256.New, pepper)
	mac.Write([]byte("oauthstore/v1/" + label))
	key := mac.Sum(nil)
	return &digester{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

// sum returns the 32-byte HMAC-SHA-256 of raw.
func (d *digester) sum(raw []byte) []byte {
	h := d.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(raw)
	out := h.Sum(make([]byte, 0, sha256.Size))
	d.pool.Put(h)
	return out
}

// mint returns a new random credential and its digest.
func (d *digester) mint() (Secret, []byte) {
	var raw [tokenBytes]byte
	_, _ = rand.Read(raw[:]) // never returns an error (crypto/rand, Go 1.24+)
	return Secret{value: tokenEncoding.EncodeToString(raw[:])}, d.sum(raw[:])
}

// digestPresented returns the digest of a credential a client presented, or false when it cannot
// be one this package minted.
func (d *digester) digestPresented(token string) ([]byte, bool) {
	if len(token) != tokenLen {
		return nil, false
	}
	var raw [tokenBytes]byte
	n, err := tokenEncoding.Decode(raw[:], []byte(token))
	if err != nil || n != tokenBytes {
		return nil, false
	}
	return d.sum(raw[:]), true
}
