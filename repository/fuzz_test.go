package repository

// Fuzz targets for everything that parses what a client or an operator sends. Each property is
// checked against an oracle written independently of the code under test. The seed corpora live
// in testdata/fuzz/<target>/ and run as ordinary tests with `go test`; to fuzz one target:
//
//	go test ./repository -run '^$' -fuzz '^FuzzDigestPresented$' -fuzztime 20s

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func fuzzPepper(b byte) []byte { return bytes.Repeat([]byte{b}, MinPepperBytes) }

// FuzzDigestPresented: token decoding never panics and accepts exactly the canonical unpadded
// base64url encodings of 32 bytes (codes, states, refresh tokens minted before schema 5) or, for
// refresh tokens, of 48 bytes (a family id and 32 bytes), which re-encode to themselves; an accepted
// token digests, under every pepper of the ring, to the HMAC-SHA-256 the package defines.
func FuzzDigestPresented(f *testing.F) {
	ring := []Pepper{{ID: "k2", Secret: NewKey(fuzzPepper(2))}, {ID: DefaultPepperID, Secret: NewKey(fuzzPepper(1))}}
	code, refresh := newDigester(ring, "refresh-token", false), newDigester(ring, "refresh-token", true)
	f.Fuzz(func(t *testing.T, token string) {
		raw, err := base64.RawURLEncoding.DecodeString(token)
		canonical := err == nil && base64.RawURLEncoding.EncodeToString(raw) == token
		if _, ok := refresh.digestPresented(token); ok != (canonical && (len(raw) == 32 || len(raw) == 48)) {
			t.Fatalf("refresh digestPresented(%q) accepted=%v, want a canonical 43- or 64-character base64url encoding of 32 or 48 bytes", token, ok)
		}
		d := code
		digests, ok := d.digestPresented(token)
		canonical = canonical && len(raw) == 32
		if ok != canonical {
			t.Fatalf("digestPresented(%q) accepted=%v, want %v (a canonical 43-character base64url encoding of 32 bytes)", token, ok, canonical)
		}
		if !ok {
			if digests != nil {
				t.Fatalf("refused token %q returned digests", token)
			}
			return
		}
		if len(digests) != len(ring) {
			t.Fatalf("%d digests for a ring of %d", len(digests), len(ring))
		}
		for i, p := range ring {
			kind := hmac.New(sha256.New, p.Secret.Bytes())
			kind.Write([]byte("oauthstore/v1/refresh-token"))
			mac := hmac.New(sha256.New, kind.Sum(nil))
			mac.Write(raw)
			if want := mac.Sum(nil); !bytes.Equal(digests[i], want) {
				t.Fatalf("digest under pepper %s is not HMAC-SHA-256(HMAC(pepper, label), raw)", p.ID)
			}
		}
		if bytes.Equal(digests[0], digests[1]) {
			t.Fatal("two peppers gave the same digest")
		}
	})
}

// validScopeToken is RFC 6749 §3.3: scope-token = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E;
// the package bounds it to MaxScopeTokenLen bytes.
func validScopeToken(tok string) bool {
	if tok == "" || len(tok) > MaxScopeTokenLen {
		return false
	}
	for _, c := range []byte(tok) {
		if !(c == 0x21 || c >= 0x23 && c <= 0x5b || c >= 0x5d && c <= 0x7e) {
			return false
		}
	}
	return true
}

// FuzzNormalizeScope: the scope is the input split on sep. normalizeScope never panics; it
// accepts exactly the lists of at most MaxScopeTokens valid tokens; its output is the input
// without repeats, in the order of first occurrence; it is idempotent.
func FuzzNormalizeScope(f *testing.F) {
	f.Fuzz(func(t *testing.T, joined string, sep byte) {
		var in []string
		if joined != "" {
			in = strings.Split(joined, string([]byte{sep}))
		}
		out, err := normalizeScope(in)
		valid := len(in) <= MaxScopeTokens
		for _, tok := range in {
			valid = valid && validScopeToken(tok)
		}
		if (err == nil) != valid {
			t.Fatalf("normalizeScope(%q): err = %v, want valid = %v", in, err, valid)
		}
		if err != nil {
			var ie *InputError
			if !errors.Is(err, ErrInvalidInput) || !errors.As(err, &ie) {
				t.Fatalf("refusal is not an *InputError: %v", err)
			}
			return
		}
		var want []string
		for _, tok := range in {
			if !slices.Contains(want, tok) {
				want = append(want, tok)
			}
		}
		if !slices.Equal(out, want) || out == nil {
			t.Fatalf("normalizeScope(%q) = %q, want %q (deduplicated, first order, never nil)", in, out, want)
		}
		again, err := normalizeScope(out)
		if err != nil || !slices.Equal(again, out) {
			t.Fatalf("not idempotent: %q → %q, %v", out, again, err)
		}
	})
}

// pepperErrorVocabulary is the text the pepper parsers' errors are made of, collected from
// benign inputs: a substring of a secret found in an error only counts as a leak when it is not
// part of this text.
func pepperErrorVocabulary() string {
	good := base64.StdEncoding.EncodeToString(fuzzPepper(9))
	var b strings.Builder
	for _, in := range []string{
		"", "!!!!", "c2hvcnQ=", "k:!!!!", "k:c2hvcnQ=", "k:" + good + ",k:" + good, "k 1:" + good, ":" + good,
		strings.Repeat("k", 33) + ":" + good, "k:" + good + ",x", "k:" + good + ",j:", "k:" + good + ",:",
	} {
		if _, err := ParsePepperRing(in); err != nil {
			b.WriteString(err.Error())
			b.WriteByte('\n')
		}
		if _, err := ParsePepper(in); err != nil {
			b.WriteString(err.Error())
			b.WriteByte('\n')
		}
	}
	b.WriteString(ErrNoPepper.Error() + "\n" + ErrPepperTooShort.Error() + "\n")
	return b.String()
}

// zeroDigits maps every digit to '0', so that entry numbers do not count as leaked text.
func zeroDigits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '0'
		}
		return r
	}, s)
}

// FuzzParsePepperRing: parsing never panics; an error never contains an 8-byte or longer piece
// of the input (secrets and IDs alike: an ID may be a secret pasted into the wrong place), beyond
// the parser's own wording; an accepted ring is well formed and round-trips.
func FuzzParsePepperRing(f *testing.F) {
	vocabulary := zeroDigits(pepperErrorVocabulary())
	f.Fuzz(func(t *testing.T, s string) {
		ring, err := ParsePepperRing(s)
		if err != nil {
			msg := err.Error()
			masked := zeroDigits(msg)
			input := zeroDigits(s)
			for i := 0; i+8 <= len(input); i++ {
				piece := input[i : i+8]
				if strings.Contains(masked, piece) && !strings.Contains(vocabulary, piece) {
					t.Fatalf("ParsePepperRing(%q): the error %q shows %q, a piece of the input", s, msg, piece)
				}
			}
			return
		}
		if len(ring) == 0 {
			t.Fatal("accepted an empty ring")
		}
		seen := map[string]bool{}
		var parts []string
		for _, p := range ring {
			if !validPepperID(p.ID) || seen[p.ID] || p.Secret.Len() < MinPepperBytes {
				t.Fatalf("accepted a malformed ring entry: ID %q, %d-byte secret, duplicate %v", p.ID, p.Secret.Len(), seen[p.ID])
			}
			seen[p.ID] = true
			part := p.ID + ":" + base64.StdEncoding.EncodeToString(p.Secret.Bytes())
			if p.Retired {
				part += ":retired"
			}
			parts = append(parts, part)
		}
		again, err := ParsePepperRing(strings.Join(parts, ","))
		if err != nil || !slices.EqualFunc(again, ring, func(a, b Pepper) bool {
			return a.ID == b.ID && a.Retired == b.Retired && bytes.Equal(a.Secret.Bytes(), b.Secret.Bytes())
		}) {
			t.Fatalf("ring of %q does not round-trip: %v", s, err)
		}
	})
}

// validVerifierOracle is RFC 7636 §4.1: code-verifier = 43*128unreserved, unreserved = ALPHA /
// DIGIT / "-" / "." / "_" / "~".
func validVerifierOracle(v string) bool { return verifierSyntax.MatchString(v) }

var (
	verifierSyntax  = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
	challengeColumn = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`) // the schema's CHECK
	s256Challenge   = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
)

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// FuzzVerifyPKCE: verifier and challenge checks never panic; validVerifier is RFC 7636 §4.1;
// S256 accepts exactly the valid verifier whose SHA-256 matches, plain exactly the equal valid
// verifier and only when allowed, any other method nothing, a code without a challenge only the
// empty verifier; validateChallenge accepts only what the method's rules and the schema allow.
func FuzzVerifyPKCE(f *testing.F) {
	f.Fuzz(func(t *testing.T, verifier, challenge, method string, allowPlain, optional bool) {
		s := &Store{allowPlainPKCE: allowPlain, pkceOptional: optional}
		valid := validVerifierOracle(verifier)
		if validVerifier(verifier) != valid {
			t.Fatalf("validVerifier(%q) = %v, want %v", verifier, !valid, valid)
		}
		want := valid && (method == PKCEMethodS256 && challenge == s256(verifier) ||
			method == PKCEMethodPlain && allowPlain && challenge == verifier)
		if got := s.verifyPKCE(&challenge, &method, verifier); got != want {
			t.Fatalf("verifyPKCE(challenge %q, method %q, verifier %q, plain allowed %v) = %v, want %v",
				challenge, method, verifier, allowPlain, got, want)
		}
		// The challenge the verifier itself yields: accepted exactly when the verifier is valid.
		ch, m := s256(verifier), PKCEMethodS256
		if got := s.verifyPKCE(&ch, &m, verifier); got != valid {
			t.Fatalf("S256 of verifier %q against its own challenge = %v, want %v", verifier, got, valid)
		}
		if got := s.verifyPKCE(nil, nil, verifier); got != (verifier == "") {
			t.Fatalf("code without a challenge, verifier %q: %v", verifier, got)
		}

		err := s.validateChallenge(challenge, method)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("validateChallenge refusal is not an input error: %v", err)
			}
			return
		}
		switch {
		case challenge == "" && method == "":
			if !optional {
				t.Fatal("accepted a missing challenge while PKCE is required")
			}
		case method == PKCEMethodS256:
			if !s256Challenge.MatchString(challenge) {
				t.Fatalf("accepted S256 challenge %q: not 43 base64url characters", challenge)
			}
		case method == PKCEMethodPlain:
			if !allowPlain || !validVerifierOracle(challenge) {
				t.Fatalf("accepted plain challenge %q (plain allowed: %v)", challenge, allowPlain)
			}
		default:
			t.Fatalf("accepted challenge %q with method %q", challenge, method)
		}
		if challenge != "" && !challengeColumn.MatchString(challenge) {
			t.Fatalf("accepted challenge %q, which the schema refuses", challenge)
		}
	})
}

// FuzzValidateJSON: validateJSON never panics; empty means {}; what it accepts is JSON (RFC 8259)
// of at most MaxJSONBytes, in UTF-8 (RFC 8259 §8.1), without a NUL byte (PostgreSQL's text, where
// it is stored, holds neither invalid UTF-8 nor NUL), and returned byte for byte.
func FuzzValidateJSON(f *testing.F) {
	// A refusal says what is wrong and nothing of the input: its text is one of these.
	var refusals []string
	for _, bad := range [][]byte{[]byte("{"), bytes.Repeat([]byte(" "), MaxJSONBytes+1)} {
		_, err := validateJSON("session", bad)
		refusals = append(refusals, err.Error())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := validateJSON("session", json.RawMessage(data))
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("refusal is not an input error: %v", err)
			}
			if len(data) == 0 {
				t.Fatal("refused empty JSON, which means {}")
			}
			if !slices.Contains(refusals, err.Error()) {
				t.Fatalf("the error %q is none of %q: it may carry the input", err, refusals)
			}
			return
		}
		if len(data) == 0 {
			if out != "{}" {
				t.Fatalf("empty JSON became %q, want {}", out)
			}
			return
		}
		switch {
		case out != string(data):
			t.Fatalf("accepted %q but returned %q", data, out)
		case !json.Valid([]byte(out)):
			t.Fatalf("accepted invalid JSON %q", data)
		case len(out) > MaxJSONBytes:
			t.Fatalf("accepted %d bytes, more than %d", len(out), MaxJSONBytes)
		case strings.IndexByte(out, 0) >= 0:
			t.Fatalf("accepted a NUL byte: %q", data)
		case !utf8.ValidString(out):
			t.Fatalf("accepted JSON that is not UTF-8 (RFC 8259 §8.1; PostgreSQL refuses it): %q", data)
		}
	})
}

// validURIText is what every stored URI must be: 1 to MaxURIBytes bytes of UTF-8 without
// control characters (PostgreSQL's text holds no NUL).
func validURIText(v string) bool {
	if v == "" || len(v) > MaxURIBytes || !utf8.ValidString(v) {
		return false
	}
	return !strings.ContainsFunc(v, unicode.IsControl)
}

// absoluteWithoutFragment is RFC 6749 §3.1.2 / RFC 8707 §2: an absolute URI, no fragment.
func absoluteWithoutFragment(v string) bool {
	u, err := url.Parse(v)
	return err == nil && u.Scheme != "" && !strings.Contains(v, "#")
}

// FuzzValidateRedirectAndResources: validateRedirectURI and validateResources never panic, accept
// only absolute URIs without a fragment that fit the columns, and validateResources returns its
// input (an empty list for none) and at most 32 of them. The resources are the input split on sep.
func FuzzValidateRedirectAndResources(f *testing.F) {
	f.Fuzz(func(t *testing.T, joined string, sep byte) {
		if err := validateRedirectURI(joined); err == nil {
			if !validURIText(joined) || !absoluteWithoutFragment(joined) {
				t.Fatalf("accepted redirect URI %q", joined)
			}
		} else if !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("redirect URI refusal is not an input error: %v", err)
		}

		var in []string
		if joined != "" {
			in = strings.Split(joined, string([]byte{sep}))
		}
		out, err := validateResources(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("resources refusal is not an input error: %v", err)
			}
			return
		}
		if len(in) > 32 {
			t.Fatalf("accepted %d resources", len(in))
		}
		for _, r := range in {
			if !validURIText(r) || !absoluteWithoutFragment(r) {
				t.Fatalf("accepted resource %q", r)
			}
		}
		if out == nil || !slices.Equal(out, in) {
			t.Fatalf("validateResources(%q) = %q", in, out)
		}
	})
}

// FuzzValidateIdentifiers: client and user IDs, revocation reasons and sender thumbprints are
// accepted only when they fit the schema's columns and CHECKs.
func FuzzValidateIdentifiers(f *testing.F) {
	thumbprintColumn := regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	text := func(v string) bool { return utf8.ValidString(v) && !strings.ContainsFunc(v, unicode.IsControl) }
	f.Fuzz(func(t *testing.T, v string) {
		if err := validateID("client_id", v); err == nil {
			if v == "" || len(v) > MaxIDBytes || !text(v) {
				t.Fatalf("accepted ID %q", v)
			}
		} else if !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("ID refusal is not an input error: %v", err)
		}
		if err := validateReason(v); err == nil {
			if v == "" || len(v) > MaxReasonBytes || !text(v) {
				t.Fatalf("accepted reason %q", v)
			}
		}
		if err := validateThumbprint(v); err == nil {
			if v != "" && !thumbprintColumn.MatchString(v) {
				t.Fatalf("accepted thumbprint %q, which the schema refuses", v)
			}
		} else if !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("thumbprint refusal is not an input error: %v", err)
		}
	})
}

var canonicalUUID = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// FuzzParseFamilyID: a family ID (operators' tools: RevokeFamily, Family, DeleteFamily) is
// accepted only in the textual form of a UUID, 8-4-4-4-12 hex digits with dashes, and names the
// UUID it spells.
func FuzzParseFamilyID(f *testing.F) {
	f.Fuzz(func(t *testing.T, id string) {
		u, err := parseFamilyID(id)
		if err != nil {
			if !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("refusal is not an input error: %v", err)
			}
			return
		}
		if !canonicalUUID.MatchString(id) || !strings.EqualFold(u.String(), id) {
			t.Fatalf("parseFamilyID(%q) accepted it as %s", id, u.String())
		}
	})
}

// FuzzAccessTokenJTIAndCursor: an opaque access token, a jti and a feed cursor are accepted only in
// their one canonical form, and an accepted token's digests are those of its bytes under the
// access-token key of each pepper; nothing panics.
func FuzzAccessTokenJTIAndCursor(f *testing.F) {
	ring := []Pepper{{ID: "k2", Secret: NewKey(fuzzPepper(2))}, {ID: DefaultPepperID, Secret: NewKey(fuzzPepper(1))}}
	d := newDigester(ring, "access-token", true)
	tok, _, _ := d.mintAccess(newFamilyID())
	jti, _ := newJTI(newStandaloneID())
	for _, s := range []string{tok.Reveal(), jti, "", "12.7", "1.-2", "9223372036854775807.0", tok.Reveal()[:65] + "=", jti + "\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := base64.RawURLEncoding.DecodeString(s)
		canonical := err == nil && base64.RawURLEncoding.EncodeToString(raw) == s
		id, digests, ok := d.decodeAccess(s)
		if ok != (canonical && len(raw) == familyIDBytes+accessEntropyBytes) {
			t.Fatalf("decodeAccess(%q) accepted=%v, want the canonical 66-character encoding of 49 bytes", s, ok)
		}
		if ok {
			if !bytes.Equal(id[:], raw[:familyIDBytes]) || len(digests) != len(ring) {
				t.Fatalf("decodeAccess(%q): family %x, %d digests", s, id, len(digests))
			}
			for i, p := range ring {
				kind := hmac.New(sha256.New, p.Secret.Bytes())
				kind.Write([]byte("oauthstore/v1/access-token"))
				mac := hmac.New(sha256.New, kind.Sum(nil))
				mac.Write(raw)
				if !bytes.Equal(digests[i], mac.Sum(nil)) {
					t.Fatalf("digest under pepper %s is not HMAC-SHA-256(HMAC(pepper, label), raw)", p.ID)
				}
			}
		}
		jid, key, ok := parseJTI(s)
		if ok != (canonical && len(raw) == familyIDBytes+jtiRandomBytes) {
			t.Fatalf("parseJTI(%q) accepted=%v, want the canonical 38-character encoding of 28 bytes", s, ok)
		}
		if ok && (!bytes.Equal(jid[:], raw[:familyIDBytes]) || !bytes.Equal(key, raw[familyIDBytes:])) {
			t.Fatalf("parseJTI(%q) split it wrongly", s)
		}
		if xid, seq, err := parseCursor(s); err == nil && s != "" {
			if got := strconv.FormatInt(xid, 10) + "." + strconv.FormatInt(seq, 10); got != s {
				// Accepted forms other than the one RevokedSince writes are refused nowhere else:
				// they must at least name the same position.
				x2, s2, err2 := parseCursor(got)
				if err2 != nil || x2 != xid || s2 != seq {
					t.Fatalf("parseCursor(%q) = %d.%d, which does not parse back", s, xid, seq)
				}
			}
		} else if err != nil && !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("parseCursor(%q): %v, want an InputError", s, err)
		}
	})
}
