package repository

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func testPepper() []byte { return bytes.Repeat([]byte{7}, MinPepperBytes) }

func ring(secret []byte) []Pepper { return []Pepper{{ID: DefaultPepperID, Secret: NewKey(secret)}} }

func TestMint_TokenIs256BitsURLSafeAndDigestIsKeyed(t *testing.T) {
	d := newDigester(ring(testPepper()), "refresh-token", false)
	seen := map[string]bool{}
	for range 1000 {
		tok, digest, _ := d.mint()
		s := tok.Reveal()
		if len(s) != 43 || strings.ContainsAny(s, "+/=") {
			t.Fatalf("token %d chars or not URL-safe", len(s))
		}
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(raw) != 32 {
			t.Fatalf("token does not decode to 32 bytes: %v", err)
		}
		if seen[s] {
			t.Fatal("the same token was minted twice")
		}
		seen[s] = true
		again, ok := d.digestPresented(s)
		if !ok || len(again) != 1 || !bytes.Equal(again[0], digest) || len(digest) != 32 {
			t.Fatal("presented token does not digest to what was stored")
		}
		if bytes.Contains(digest, raw) {
			t.Fatal("digest contains the raw token")
		}
	}
	tok, digest, _ := d.mint()
	other := newDigester(ring(append(testPepper(), 1)), "refresh-token", false)
	if d2, _ := other.digestPresented(tok.Reveal()); bytes.Equal(d2[0], digest) {
		t.Fatal("another pepper gives the same digest")
	}
	code := newDigester(ring(testPepper()), "authorization-code", false)
	if d2, _ := code.digestPresented(tok.Reveal()); bytes.Equal(d2[0], digest) {
		t.Fatal("another credential kind gives the same digest under the same pepper")
	}
}

func TestMintFor_RefreshTokenCarriesItsFamilyAndLegacyTokensStayAccepted(t *testing.T) {
	d := newDigester(ring(testPepper()), "refresh-token", true)
	id := newFamilyID()
	if id[6]>>4 != 4 || id[8]>>6 != 2 {
		t.Fatalf("family id %x is not a version 4 UUID", id)
	}
	tok, digest, _ := d.mintFor(id)
	s := tok.Reveal()
	if len(s) != 64 || strings.ContainsAny(s, "+/=") {
		t.Fatalf("refresh token of %d chars or not URL-safe", len(s))
	}
	if got, ok := familyOf(s); !ok || got != id {
		t.Fatalf("familyOf = %x, %v; want %x", got, ok, id)
	}
	again, ok := d.digestPresented(s)
	if !ok || !bytes.Equal(again[0], digest) {
		t.Fatal("presented refresh token does not digest to what was stored")
	}
	// The digest covers the family id: the same entropy under another family is another token.
	raw, _ := base64.RawURLEncoding.DecodeString(s)
	raw[0] ^= 1
	if other, ok := d.digestPresented(base64.RawURLEncoding.EncodeToString(raw)); !ok || bytes.Equal(other[0], digest) {
		t.Fatal("a token naming another family digests to the same value")
	}
	// A token minted before refresh tokens carried their family is still read, without one.
	legacy, legacyDigest, _ := d.mint()
	if got, ok := d.digestPresented(legacy.Reveal()); !ok || !bytes.Equal(got[0], legacyDigest) {
		t.Fatal("a refresh token without a family id is no longer accepted")
	}
	if _, ok := familyOf(legacy.Reveal()); ok {
		t.Fatal("a refresh token without a family id gave one")
	}
	// Codes and states never take the longer form.
	code := newDigester(ring(testPepper()), "authorization-code", false)
	if _, ok := code.digestPresented(s); ok {
		t.Fatal("a code digester accepted a refresh token's form")
	}
	// The successor sealed for a parent of either form opens with that parent only.
	successor, successorDigest, _ := d.mintFor(id)
	salt := d.graceSalt(DefaultPepperID)
	for _, parent := range []struct {
		tok    Secret
		digest []byte
	}{{tok, digest}, {legacy, legacyDigest}} {
		sealed := sealSuccessor(parent.tok.Reveal(), salt, parent.digest, successorDigest, successor)
		// Only the successor's entropy is sealed: its family id is the family's.
		if len(sealed) != 12+tokenBytes+16 {
			t.Fatalf("sealed copy of %d bytes", len(sealed))
		}
		if got, ok := d.openSuccessor(parent.tok.Reveal(), salt, parent.digest, successorDigest, sealed, id); !ok || got.Reveal() != successor.Reveal() {
			t.Fatal("the parent's holder cannot open the sealed successor")
		}
		if _, ok := d.openSuccessor(successor.Reveal(), salt, parent.digest, successorDigest, sealed, id); ok {
			t.Fatal("the successor opened its own sealed copy")
		}
		if _, ok := d.openSuccessor(parent.tok.Reveal(), salt, parent.digest, successorDigest, sealed, newFamilyID()); ok {
			t.Fatal("the sealed copy opened as the successor of another family")
		}
	}
}

func TestDigestPresented_RefusesWhatCannotBeAToken(t *testing.T) {
	d := newDigester(ring(testPepper()), "refresh-token", false)
	tok, _, _ := d.mint()
	s := tok.Reveal()
	// The last of 43 characters carries 4 bits of the 256 and 2 zero bits; setting one of those
	// gives a string that decodes to the same bytes but is not the token that was minted.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	nonCanonical := s[:42] + string(alphabet[strings.IndexByte(alphabet, s[42])+1])
	for name, in := range map[string]string{
		"empty":         "",
		"short":         s[:42],
		"long":          s + "A",
		"padding":       s[:42] + "=",
		"std alphabet":  s[:42] + "+",
		"NUL":           s[:42] + "\x00",
		"non-UTF-8":     s[:42] + "\xff",
		"huge":          strings.Repeat("A", 1<<20),
		"non-canonical": nonCanonical,
	} {
		if _, ok := d.digestPresented(in); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestSecret_RedactsEverywhere(t *testing.T) {
	s := newSecret("very-secret-value")
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("issued", "token", s, "struct", RefreshToken{Token: s})
	js, err := json.Marshal(RefreshToken{Token: s})
	if err != nil {
		t.Fatal(err)
	}
	out := buf.String() + string(js) + fmt.Sprintf("%v %+v %#v %s %q %x %d", s, s, s, s, s, s, s) +
		fmt.Sprint(RefreshToken{Token: s}) + fmt.Sprintf("%#v", RefreshToken{Token: s})
	if strings.Contains(out, "very-secret-value") {
		t.Fatalf("secret printed: %s", out)
	}
	if !strings.Contains(out, redacted) {
		t.Fatal("no redaction marker")
	}
	if s.Reveal() != "very-secret-value" {
		t.Fatal("Reveal lost the value")
	}
}

func TestParsePepper(t *testing.T) {
	p := bytes.Repeat([]byte{0xfb}, 32)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		got, err := ParsePepper(" " + enc.EncodeToString(p) + "\n")
		if err != nil || !bytes.Equal(got.Bytes(), p) {
			t.Fatalf("%v: %v", enc, err)
		}
	}
	short := base64.StdEncoding.EncodeToString(p[:31])
	if _, err := ParsePepper(short); !errors.Is(err, ErrPepperTooShort) {
		t.Fatalf("31 bytes: %v", err)
	}
	secretish := "not base64 at all! but long enough to be a pepper"
	_, err := ParsePepper(secretish)
	if !errors.Is(err, ErrInvalidInput) || strings.Contains(err.Error(), secretish) {
		t.Fatalf("non-base64: %v", err)
	}
	t.Setenv(PepperEnv, "")
	if _, err := PepperFromEnv(); !errors.Is(err, ErrNoPepper) {
		t.Fatalf("unset: %v", err)
	}
	t.Setenv(PepperEnv, short)
	if _, err := PepperFromEnv(); !errors.Is(err, ErrPepperTooShort) || strings.Contains(err.Error(), short) {
		t.Fatalf("short env pepper: %v", err)
	}
	t.Setenv(PepperEnv, base64.StdEncoding.EncodeToString(p))
	if got, err := PepperFromEnv(); err != nil || len(got) != 1 || got[0].ID != DefaultPepperID || !bytes.Equal(got[0].Secret.Bytes(), p) {
		t.Fatalf("env pepper: %v", err)
	}
}

func TestParsePepperRing(t *testing.T) {
	a, b := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 48)
	enc := base64.StdEncoding.EncodeToString
	got, err := ParsePepperRing(" k2:" + enc(b) + " , default:" + base64.RawURLEncoding.EncodeToString(a) + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "k2" || !bytes.Equal(got[0].Secret.Bytes(), b) || got[1].ID != "default" || !bytes.Equal(got[1].Secret.Bytes(), a) {
		t.Fatalf("ring: %+v", got)
	}
	secret := enc(a)
	for name, in := range map[string]string{
		"duplicate id":  "k:" + secret + ",k:" + enc(b),
		"bad id":        "k 1:" + secret,
		"long id":       strings.Repeat("k", 33) + ":" + secret,
		"empty id":      ":" + secret,
		"short pepper":  "k:" + enc(a[:16]),
		"not base64":    "k:" + secret[:10] + "!" + secret[11:],
		"missing colon": "k:" + secret + "," + secret,
	} {
		_, err := ParsePepperRing(in)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:10]) {
			t.Errorf("%s: error shows the secret: %v", name, err)
		}
	}
}

func TestNew_RefusesShortPepperAndBadTTL(t *testing.T) {
	// Construction runs no statement; the DBTX is never called.
	var db DBTX = unusedDB{}
	if _, err := New(db, Config{Pepper: NewKey(make([]byte, 31))}); !errors.Is(err, ErrPepperTooShort) {
		t.Fatalf("31-byte pepper: %v", err)
	}
	if _, err := New(nil, Config{Pepper: NewKey(testPepper())}); !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("nil db: %v", err)
	}
	for _, ttl := range []int64{-1, 1, int64(MaxTTL) + 1} {
		if _, err := New(db, Config{Pepper: NewKey(testPepper()), RefreshTokenTTL: time.Duration(ttl)}); !errors.Is(err, ErrInvalidInput) {
			t.Fatalf("ttl %d: %v", ttl, err)
		}
	}
	if _, err := New(db, Config{Pepper: NewKey(testPepper())}); err != nil {
		t.Fatal(err)
	}
}

type unusedDB struct{ DBTX }

// TestSecret_NoVerbNestingOrEncoderPrintsACredential prints every exported type that holds a
// secret, by value and by pointer, embedded, in slices, maps and structs of the caller's, with
// every fmt verb, and through JSON, slog and errors: the raw value never appears. fmt prints a
// value again with its methods turned off when a verb does not fit (%s of a struct pointer), so
// the test covers that path as well as the ones that call Format.
func TestSecret_NoVerbNestingOrEncoderPrintsACredential(t *testing.T) {
	const raw = "raw-credential-value-0123456789abcdefghijklm"
	pepper := bytes.Repeat([]byte("P"), 32)
	s := newSecret(raw)
	tok := &RefreshToken{Token: s, Grant: Grant{FamilyID: "f", ClientID: "c"}}
	exchange := &CodeExchange{RefreshToken: tok, Nonce: "n"}
	code := &AuthorizationCode{Code: s}
	state := &IssuedState{State: s}
	ring := []Pepper{{ID: "p", Secret: NewKey(pepper)}}
	type callers struct {
		Exchange *CodeExchange
		Token    RefreshToken
		inner    *RefreshToken
		Any      any
	}
	values := map[string]any{
		"Secret": s, "*Secret": &s,
		"RefreshToken": *tok, "*RefreshToken": tok,
		"CodeExchange": *exchange, "*CodeExchange": exchange,
		"AuthorizationCode": *code, "*AuthorizationCode": code,
		"IssuedState": *state, "*IssuedState": state,
		"[]*RefreshToken":          []*RefreshToken{tok},
		"map[string]*CodeExchange": map[string]*CodeExchange{"k": exchange},
		"[]Secret":                 []Secret{s},
		"struct of the caller's":   callers{Exchange: exchange, Token: *tok, inner: tok, Any: code},
		"*struct of the caller's":  &callers{Exchange: exchange, Token: *tok, inner: tok, Any: state},
		"Pepper":                   ring[0],
		"[]Pepper":                 ring,
		"*Pepper":                  &ring[0],
	}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%t", "%p", "%T", "%10.3s", "%-v", "%e", "%U", "%c"}
	secrets := []string{raw, string(pepper), base64.StdEncoding.EncodeToString(pepper), fmt.Sprintf("%x", raw), fmt.Sprintf("%X", raw),
		fmt.Sprintf("%x", pepper), fmt.Sprint([]byte(raw)), fmt.Sprint(pepper)}
	check := func(what, out string) {
		t.Helper()
		for _, secret := range secrets {
			if strings.Contains(out, secret) {
				t.Errorf("%s printed a secret: %s", what, out)
				return
			}
		}
	}
	for name, v := range values {
		for _, verb := range verbs {
			check(name+" with "+verb, fmt.Sprintf(verb, v))
		}
		check(name+" through fmt.Sprint", fmt.Sprint(v))
		check(name+" through fmt.Errorf %w-less", fmt.Errorf("failed: %v", v).Error())
		check(name+" through errors.Join", errors.Join(fmt.Errorf("%+v", v)).Error())
		js, err := json.Marshal(v)
		if err == nil {
			check(name+" through JSON", string(js))
		}
		var buf bytes.Buffer
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v)
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v, slog.Any("any", v), slog.Group("g", "v", v))
		check(name+" through slog", buf.String())
	}
	if s.Reveal() != raw || tok.Token.Reveal() != raw {
		t.Fatal("Reveal lost the value")
	}
}

func TestSealedSuccessor_OpensOnlyWithTheParentAndForItsDigests(t *testing.T) {
	d := newDigester(ring(testPepper()), "refresh-token", false)
	parent, parentDigest, _ := d.mint()
	successor, successorDigest, _ := d.mint()
	salt := d.graceSalt(DefaultPepperID)
	sealed := sealSuccessor(parent.Reveal(), salt, parentDigest, successorDigest, successor)
	if len(sealed) != 12+tokenBytes+16 {
		t.Fatalf("sealed copy of %d bytes", len(sealed))
	}
	got, ok := d.openSuccessor(parent.Reveal(), salt, parentDigest, successorDigest, sealed, [familyIDBytes]byte{})
	if !ok || got.Reveal() != successor.Reveal() {
		t.Fatal("the parent's holder cannot open the sealed successor")
	}
	other, _, _ := d.mint()
	other2 := newDigester(ring(bytes.Repeat([]byte{9}, 32)), "refresh-token", false)
	for name, c := range map[string]struct {
		presented   string
		salt        []byte
		parent, suc []byte
		sealed      []byte
	}{
		"another token":          {other.Reveal(), salt, parentDigest, successorDigest, sealed},
		"the parent's digest":    {tokenEncoding.EncodeToString(parentDigest), salt, parentDigest, successorDigest, sealed},
		"the pepper":             {tokenEncoding.EncodeToString(testPepper()[:tokenBytes]), salt, parentDigest, successorDigest, sealed},
		"another successor":      {parent.Reveal(), salt, parentDigest, parentDigest, sealed},
		"another parent digest":  {parent.Reveal(), salt, successorDigest, successorDigest, sealed},
		"a flipped bit":          {parent.Reveal(), salt, parentDigest, successorDigest, append(append([]byte(nil), sealed[:20]...), append([]byte{sealed[20] ^ 1}, sealed[21:]...)...)},
		"a truncated ciphertext": {parent.Reveal(), salt, parentDigest, successorDigest, sealed[:10]},
		"nothing":                {parent.Reveal(), salt, parentDigest, successorDigest, nil},
		"another pepper's salt":  {parent.Reveal(), other2.graceSalt(DefaultPepperID), parentDigest, successorDigest, sealed},
		"no salt":                {parent.Reveal(), nil, parentDigest, successorDigest, sealed},
	} {
		if _, ok := d.openSuccessor(c.presented, c.salt, c.parent, c.suc, c.sealed, [familyIDBytes]byte{}); ok {
			t.Errorf("%s opened the sealed successor", name)
		}
	}
	if bytes.Contains(sealed, []byte(successor.Reveal())) || bytes.Contains(sealed, successorDigest) {
		t.Fatal("the sealed copy shows the successor")
	}
}
