package repository

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"slices"
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

// tokenLen is the length of a minted code or state, and of a refresh token minted before
// migration 5: tokenBytes in unpadded base64url.
var tokenLen = base64.RawURLEncoding.EncodedLen(tokenBytes)

// familyIDBytes is the length of the family id a refresh token begins with.
const familyIDBytes = 16

// familyTokenLen is the length of a refresh token: its family's id and tokenBytes of entropy, in
// unpadded base64url.
var familyTokenLen = base64.RawURLEncoding.EncodedLen(familyIDBytes + tokenBytes)

var tokenEncoding = base64.RawURLEncoding.Strict()

// Pepper is one key of the pepper ring. Its ID is recorded next to each digest made with it, so
// that an operator can see what still depends on it (Store.PepperUsage).
type Pepper struct {
	ID     string
	Secret Key
	// Retired makes the pepper recognise-only: a consumed refresh token or code made under it is
	// still recognised, so that its replay revokes its family (I4), but nothing made under it is
	// accepted any more — a live token, a pending code or a state found only under it is
	// unknown. The current pepper (the first of the ring) cannot be retired.
	Retired bool
}

// The ways a Pepper prints: its ID, never its secret.
func (p Pepper) String() string {
	if p.Retired {
		return "Pepper{" + p.ID + " retired " + redacted + "}"
	}
	return "Pepper{" + p.ID + " " + redacted + "}"
}
func (p Pepper) GoString() string           { return p.String() }
func (p Pepper) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(p.String())) }
func (p Pepper) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", p.ID), slog.Bool("retired", p.Retired), slog.String("secret", redacted))
}
func (p Pepper) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID      string `json:"id"`
		Retired bool   `json:"retired,omitempty"`
		Secret  string `json:"secret"`
	}{p.ID, p.Retired, redacted})
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
// or comma-separated ID:base64 pairs, the first of which is current; a pair followed by ":retired"
// is a retired, recognise-only pepper (Pepper.Retired):
//
//	OAUTH_AT_REST_PEPPER=2027-01:Zm9v…,default:YmFy…:retired
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
		value, retired := strings.CutSuffix(value, ":retired")
		p, err := ParsePepper(value)
		if err != nil {
			return nil, fmt.Errorf("pepper ring entry %d: %w", i+1, err)
		}
		ring = append(ring, Pepper{ID: id, Secret: p, Retired: retired})
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
		if p.Secret.Len() < MinPepperBytes {
			return fmt.Errorf("pepper ring entry %d: %w", i+1, ErrPepperTooShort)
		}
		if i == 0 && p.Retired {
			return inputError("pepper ring", "entry 1 is the current pepper and cannot be retired")
		}
	}
	return nil
}

// ParsePepper decodes one base64 pepper (standard or URL alphabet, padded or not) and checks its
// length. The error never contains the value.
func ParsePepper(s string) (Key, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if p, err := enc.DecodeString(s); err == nil {
			if len(p) < MinPepperBytes {
				return Key{}, ErrPepperTooShort
			}
			return NewKey(p), nil
		}
	}
	return Key{}, inputError("pepper", "not base64")
}

// Key is secret key material: a pepper. Like Secret, it prints, logs and marshals as
// "[REDACTED]", and its bytes sit behind a pointer so that no fmt verb and no nesting prints them.
type Key struct{ b *[]byte }

// NewKey returns a Key holding a copy of b.
func NewKey(b []byte) Key {
	c := append([]byte(nil), b...)
	return Key{b: &c}
}

// Bytes returns a copy of the key material.
func (k Key) Bytes() []byte {
	if k.b == nil {
		return nil
	}
	return append([]byte(nil), *k.b...)
}

// Len returns the length of the key material in bytes.
func (k Key) Len() int {
	if k.b == nil {
		return 0
	}
	return len(*k.b)
}

// IsZero reports whether the key is unset.
func (k Key) IsZero() bool { return k.b == nil }

func (Key) String() string               { return redacted }
func (Key) GoString() string             { return redacted }
func (Key) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
func (Key) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Key) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Key) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// Secret is a raw credential to hand to a client exactly once. It prints, logs and marshals as
// "[REDACTED]" so that it cannot reach a log line by accident; Reveal returns the value.
//
// The value sits behind a pointer: where fmt prints a value without calling its methods (a bad
// verb on a struct holding a Secret prints the struct again with them turned off), a nested
// pointer prints as an address, never as what it points to.
type Secret struct{ value *string }

func newSecret(v string) Secret { return Secret{value: &v} }

// Reveal returns the raw credential, to be written into the token response and nowhere else.
func (s Secret) Reveal() string {
	if s.value == nil {
		return ""
	}
	return *s.value
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.Reveal() == "" }

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
type digester struct {
	keys []digestKey
	// family: the credentials begin with the id of their family (refresh tokens). Those minted
	// before migration 5, which do not, are accepted too.
	family bool
}

type digestKey struct {
	pepperID string
	retired  bool
	pool     sync.Pool
	// graceSalt salts the key of the successors sealed for holders of tokens made under this
	// pepper: the database and a stolen parent together do not open them.
	graceSalt []byte
}

func newDigester(ring []Pepper, label string, family bool) *digester {
	if len(ring) == 0 {
		return nil // an admin store (NewAdmin): no credentials
	}
	d := &digester{keys: make([]digestKey, len(ring)), family: family}
	for i, p := range ring {
		mac := hmac.New(sha256.New, p.Secret.Bytes())
		mac.Write([]byte("oauthstore/v1/" + label))
		key := mac.Sum(nil)
		d.keys[i].pepperID = p.ID
		d.keys[i].retired = p.Retired
		salt := hmac.New(sha256.New, p.Secret.Bytes())
		salt.Write([]byte("oauthstore/v1/grace-salt/" + label))
		d.keys[i].graceSalt = salt.Sum(nil)
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
	return newSecret(tokenEncoding.EncodeToString(raw[:])), k.sum(raw[:]), k.pepperID
}

// mintFor returns a new refresh token of the family id names: the id followed by tokenBytes of
// entropy; its digest, of both, under the current pepper; and that pepper's ID.
func (d *digester) mintFor(id [familyIDBytes]byte) (Secret, []byte, string) {
	var raw [familyIDBytes + tokenBytes]byte
	copy(raw[:], id[:])
	_, _ = rand.Read(raw[familyIDBytes:])
	k := &d.keys[0]
	return newSecret(tokenEncoding.EncodeToString(raw[:])), k.sum(raw[:]), k.pepperID
}

// newFamilyID returns a random (version 4) UUID for a new family.
func newFamilyID() [familyIDBytes]byte {
	var id [familyIDBytes]byte
	_, _ = rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

// newStandaloneID returns a random id for a standalone access token's grant, which names no
// family: a UUID of version 8 (RFC 9562 §5.8), where every family's id is of version 4, so that
// the token tells which it is.
func newStandaloneID() [familyIDBytes]byte {
	id := newFamilyID()
	id[6] = id[6]&0x0f | 0x80
	return id
}

// isStandalone reports whether a grant id is a standalone access token's (newStandaloneID).
func isStandalone(id [familyIDBytes]byte) bool { return id[6]>>4 == 8 }

// decodeToken returns the bytes of a credential this package minted: tokenBytes of entropy, or
// for a refresh token the family id followed by them. Anything else is false.
//
// Only the canonical encoding is accepted: the decoder skips newlines, so the length decoded must
// be the one the string's length encodes.
func decodeToken(token string) ([]byte, bool) {
	var want int
	switch len(token) {
	case tokenLen:
		want = tokenBytes
	case familyTokenLen:
		want = familyIDBytes + tokenBytes
	default:
		return nil, false
	}
	raw := make([]byte, familyIDBytes+tokenBytes)
	n, err := tokenEncoding.Decode(raw, []byte(token))
	if err != nil || n != want {
		return nil, false
	}
	return raw[:n], true
}

// familyOf returns the family id a refresh token carries, or false for one minted before
// migration 5 (or one that is no refresh token).
func familyOf(token string) ([familyIDBytes]byte, bool) {
	var id [familyIDBytes]byte
	raw, ok := decodeToken(token)
	if !ok || len(raw) != familyIDBytes+tokenBytes {
		return id, false
	}
	copy(id[:], raw)
	return id, true
}

// digestPresented returns the digests of a credential a client presented, one per pepper of the
// ring, or false when it cannot be one this package minted of the digester's kind.
func (d *digester) digestPresented(token string) ([][]byte, bool) {
	raw, ok := decodeToken(token)
	if !ok || (len(raw) != tokenBytes && !d.family) {
		return nil, false
	}
	out := make([][]byte, len(d.keys))
	for i := range d.keys {
		out[i] = d.keys[i].sum(raw)
	}
	return out, true
}

// retired reports whether pepperID names a retired pepper of the ring: what was made under it is
// recognised as evidence but accepted no more.
func (d *digester) retired(pepperID string) bool {
	for i := range d.keys {
		if d.keys[i].pepperID == pepperID {
			return d.keys[i].retired
		}
	}
	return false
}

// accepted drops from digests, as digestPresented returned them, those of retired peppers.
func (d *digester) accepted(digests [][]byte) [][]byte {
	out := digests[:0:0]
	for i := range d.keys {
		if !d.keys[i].retired {
			out = append(out, digests[i])
		}
	}
	return out
}

// The successor a rotation hands out is kept encrypted for the holder of its parent, so that a
// lost response retried within the grace window gets the same successor back. The key comes from
// the raw parent token, which the database never sees (it keeps a keyed digest of it), salted with
// a key derived from the parent's pepper: neither the database with the pepper, nor the database
// with a stolen parent, opens the ciphertext. The associated data binds it to the parent's and the
// successor's digests, so that it opens only as the copy of that successor.

const graceKeyInfo = "oauthstore/v1/grace-successor"

func graceAEAD(rawParent, salt []byte) cipher.AEAD {
	key, err := hkdf.Key(sha256.New, rawParent, salt, graceKeyInfo, 32)
	if err != nil {
		panic(err) // only for a length beyond what HKDF-SHA-256 can give
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // only for a key that is not 16, 24 or 32 bytes
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

// sealSuccessor encrypts successor for the holder of the presented parent token, made under the
// pepper with the given grace salt: a random nonce followed by the sealed token bytes.
//
// Only the successor's entropy is sealed: the family id it begins with is the family's, which
// whoever opens the copy knows.
func sealSuccessor(presented string, salt, parentDigest, successorDigest []byte, successor Secret) []byte {
	rawParent, ok := decodeToken(presented)
	rawSuccessor, ok2 := decodeToken(successor.Reveal())
	if !ok || !ok2 || salt == nil {
		return nil
	}
	entropy := rawSuccessor[len(rawSuccessor)-tokenBytes:]
	aead := graceAEAD(rawParent, salt)
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+tokenBytes+aead.Overhead())
	_, _ = rand.Read(nonce)
	return aead.Seal(nonce, nonce, entropy, graceAAD(parentDigest, successorDigest))
}

// openSuccessor opens what sealSuccessor sealed, with the presented parent token.
// It returns the successor of the given family whose digest is successorDigest under a pepper of
// the ring: a token that carries the family id, or one minted before tokens did (sealed by schema
// 4 with all its bytes, which are its entropy).
func (d *digester) openSuccessor(presented string, salt, parentDigest, successorDigest, sealed []byte, family [familyIDBytes]byte) (Secret, bool) {
	rawParent, ok := decodeToken(presented)
	if !ok || salt == nil {
		return Secret{}, false
	}
	aead := graceAEAD(rawParent, salt)
	if len(sealed) < aead.NonceSize() {
		return Secret{}, false
	}
	entropy, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], graceAAD(parentDigest, successorDigest))
	if err != nil || len(entropy) != tokenBytes {
		return Secret{}, false
	}
	for _, raw := range [][]byte{append(family[:], entropy...), entropy} {
		if token := newSecret(tokenEncoding.EncodeToString(raw)); d.matches(token, successorDigest) {
			return token, true
		}
	}
	return Secret{}, false
}

func graceAAD(parentDigest, successorDigest []byte) []byte {
	return append(append([]byte(graceKeyInfo+"\x00"), parentDigest...), successorDigest...)
}

// matches reports whether token's digest under some pepper of the ring is digest.
func (d *digester) matches(token Secret, digest []byte) bool {
	digests, ok := d.digestPresented(token.Reveal())
	return ok && slices.ContainsFunc(digests, func(x []byte) bool { return hmac.Equal(x, digest) })
}

// graceSalt returns the grace salt of the pepper pepperID names, or nil when the ring lacks it.
func (d *digester) graceSalt(pepperID string) []byte {
	for i := range d.keys {
		if d.keys[i].pepperID == pepperID {
			return d.keys[i].graceSalt
		}
	}
	return nil
}

// currentPepperID is the ID of the pepper new digests are made with.
func (d *digester) currentPepperID() string { return d.keys[0].pepperID }

// An opaque access token is the id of its family (or standalone grant) followed by
// accessEntropyBytes from crypto/rand, in unpadded base64url: 66 characters, a length no other
// credential of the package has. Its digest, under a key of its own, covers both.
const accessEntropyBytes = 33

var accessTokenLen = base64.RawURLEncoding.EncodedLen(familyIDBytes + accessEntropyBytes)

// A JWT's jti is the id of its family (or standalone grant) followed by jtiRandomBytes, in
// unpadded base64url: 38 characters. It is unique, not secret: the random part is stored as it is.
const jtiRandomBytes = 12

// mintAccess returns a new opaque access token of the family (or grant) id names, its digest
// under the current pepper, and that pepper's ID.
func (d *digester) mintAccess(id [familyIDBytes]byte) (Secret, []byte, string) {
	var raw [familyIDBytes + accessEntropyBytes]byte
	copy(raw[:], id[:])
	_, _ = rand.Read(raw[familyIDBytes:])
	k := &d.keys[0]
	return newSecret(tokenEncoding.EncodeToString(raw[:])), k.sum(raw[:]), k.pepperID
}

// decodeAccess returns the family id an opaque access token carries and its digests under each
// pepper of the ring, or false when it cannot be an access token this package minted.
func (d *digester) decodeAccess(token string) ([familyIDBytes]byte, [][]byte, bool) {
	id, raw, ok := decodeGrantBound(token, accessEntropyBytes)
	if !ok {
		return id, nil, false
	}
	out := make([][]byte, len(d.keys))
	for i := range d.keys {
		out[i] = d.keys[i].sum(raw)
	}
	return id, out, true
}

// newJTI returns a new jti of the family (or grant) id names, and the random part that keys it.
func newJTI(id [familyIDBytes]byte) (string, []byte) {
	var raw [familyIDBytes + jtiRandomBytes]byte
	copy(raw[:], id[:])
	_, _ = rand.Read(raw[familyIDBytes:])
	return tokenEncoding.EncodeToString(raw[:]), raw[familyIDBytes:]
}

// parseJTI returns the family id and the random part of a jti this package minted.
func parseJTI(jti string) ([familyIDBytes]byte, []byte, bool) {
	id, raw, ok := decodeGrantBound(jti, jtiRandomBytes)
	if !ok {
		return id, nil, false
	}
	return id, raw[familyIDBytes:], true
}

// decodeGrantBound decodes the canonical unpadded base64url of a grant id followed by n random
// bytes, and returns the id and all the bytes; false for anything else.
func decodeGrantBound(s string, n int) ([familyIDBytes]byte, []byte, bool) {
	var id [familyIDBytes]byte
	if len(s) != base64.RawURLEncoding.EncodedLen(familyIDBytes+n) {
		return id, nil, false
	}
	raw := make([]byte, familyIDBytes+n)
	if got, err := tokenEncoding.Decode(raw, []byte(s)); err != nil || got != len(raw) {
		return id, nil, false
	}
	copy(id[:], raw)
	return id, raw, true
}
