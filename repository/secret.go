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

// Pepper is one key of the pepper ring. Its ID is recorded next to each digest made with it, so
// that an operator can see when no live token depends on a retired pepper.
type Pepper struct {
	ID     string
	Secret []byte
}

// DefaultPepperID names the pepper of a one-key ring given as a bare base64 value.
const DefaultPepperID = "default"

// PepperFromEnv reads the pepper ring from OAUTH_AT_REST_PEPPER; see ParsePepperRing.
func PepperFromEnv() ([]Pepper, error) {
	v := os.Getenv(PepperEnv)
	if strings.TrimSpace(v) == "" {
		return nil, fmt.Errorf("%w: set %s to the base64 of %d or more random bytes", ErrNoPepper, PepperEnv, MinPepperBytes)
	}
	ring, err := ParsePepperRing(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", PepperEnv, err)
	}
	return ring, nil
}

// ParsePepperRing parses a pepper ring: either one base64 value (standard or URL alphabet, padded
// or not) of at least MinPepperBytes random bytes, which is a ring of one pepper with ID "default",
// or comma-separated ID:base64 pairs, the first of which is current:
//
//	OAUTH_AT_REST_PEPPER=2027-01:Zm9v…,default:YmFy…
//
// IDs are 1–32 characters of [A-Za-z0-9._-]. Errors name an entry by its position and never
// repeat any part of the input: an ID shares the variable with the secrets and may be one of them
// pasted into the wrong place.
func ParsePepperRing(s string) ([]Pepper, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, ":") {
		p, err := ParsePepper(s)
		if err != nil {
			return nil, err
		}
		return []Pepper{{ID: DefaultPepperID, Secret: p}}, nil
	}
	var ring []Pepper
	for i, item := range strings.Split(s, ",") {
		id, value, ok := strings.Cut(strings.TrimSpace(item), ":")
		if !ok {
			return nil, inputError("pepper ring", fmt.Sprintf("entry %d is not ID:base64", i+1))
		}
		p, err := ParsePepper(value)
		if err != nil {
			return nil, fmt.Errorf("pepper ring entry %d: %w", i+1, err)
		}
		ring = append(ring, Pepper{ID: id, Secret: p})
	}
	if err := validateRing(ring); err != nil {
		return nil, err
	}
	return ring, nil
}

func validPepperID(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validateRing(ring []Pepper) error {
	if len(ring) == 0 {
		return ErrNoPepper
	}
	seen := map[string]int{}
	for i, p := range ring {
		if !validPepperID(p.ID) {
			return inputError("pepper ring", fmt.Sprintf("entry %d: ID must be 1-32 characters of [A-Za-z0-9._-]", i+1))
		}
		if first, dup := seen[p.ID]; dup {
			return inputError("pepper ring", fmt.Sprintf("entries %d and %d have the same ID", first+1, i+1))
		}
		seen[p.ID] = i
		if len(p.Secret) < MinPepperBytes {
			return fmt.Errorf("pepper ring entry %d: %w", i+1, ErrPepperTooShort)
		}
	}
	return nil
}

// ParsePepper decodes one base64 pepper (standard or URL alphabet, padded or not) and checks its
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

// digester computes keyed digests of one kind of credential under every pepper of the ring. Each
// kind has its own key per pepper, derived from it, so that a digest of one kind can never be
// confused with another's.
type digester struct{ keys []digestKey }

type digestKey struct {
	pepperID string
	pool     sync.Pool
}

func newDigester(ring []Pepper, label string) *digester {
	if len(ring) == 0 {
		return nil // an admin store (NewAdmin): no credentials
	}
	d := &digester{keys: make([]digestKey, len(ring))}
	for i, p := range ring {
		mac := hmac.New(sha256.New, p.Secret)
		mac.Write([]byte("oauthstore/v1/" + label))
		key := mac.Sum(nil)
		d.keys[i].pepperID = p.ID
		d.keys[i].pool.New = func() any { return hmac.New(sha256.New, key) }
	}
	return d
}

// sum returns the 32-byte HMAC-SHA-256 of raw under key k.
func (k *digestKey) sum(raw []byte) []byte {
	h := k.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(raw)
	out := h.Sum(make([]byte, 0, sha256.Size))
	k.pool.Put(h)
	return out
}

// mint returns a new random credential, its digest under the current pepper, and that pepper's ID.
func (d *digester) mint() (Secret, []byte, string) {
	var raw [tokenBytes]byte
	_, _ = rand.Read(raw[:]) // never returns an error (crypto/rand, Go 1.24+)
	k := &d.keys[0]
	return Secret{value: tokenEncoding.EncodeToString(raw[:])}, k.sum(raw[:]), k.pepperID
}

// digestPresented returns the digests of a credential a client presented, one per pepper of the
// ring, or false when it cannot be one this package minted.
func (d *digester) digestPresented(token string) ([][]byte, bool) {
	if len(token) != tokenLen {
		return nil, false
	}
	var raw [tokenBytes]byte
	n, err := tokenEncoding.Decode(raw[:], []byte(token))
	if err != nil || n != tokenBytes {
		return nil, false
	}
	out := make([][]byte, len(d.keys))
	for i := range d.keys {
		out[i] = d.keys[i].sum(raw[:])
	}
	return out, true
}
