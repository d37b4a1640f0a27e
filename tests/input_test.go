package tests

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

// hostileStrings are the values a client or a buggy caller can send.
var hostileStrings = map[string]string{
	"empty":              "",
	"1 MiB":              strings.Repeat("a", 1<<20),
	"257 bytes":          strings.Repeat("a", 257),
	"NUL byte":           "client\x00",
	"invalid UTF-8":      "client\xff\xfe",
	"control character":  "client\n",
	"SQL metacharacters": "'; DROP TABLE oauth_family; --\t",
}

func TestIssue_HostileInputIsATypedErrorAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.issue(t)
	before := b.tableChecksum(t)
	valid := repository.IssueRequest{ClientID: "client-a", UserID: "user-1", Scope: []string{"openid"}}
	var cases []repository.IssueRequest
	for _, v := range hostileStrings {
		r := valid
		r.ClientID = v
		cases = append(cases, r)
		r = valid
		r.UserID = v
		cases = append(cases, r)
		if v != "" {
			r = valid
			r.Scope = []string{"openid", v}
			cases = append(cases, r)
			r = valid
			r.SenderThumbprint = v
			cases = append(cases, r)
		}
	}
	for _, scope := range [][]string{{""}, {"a b"}, {`quo"te`}, {`back\slash`}, {"é"}, make([]string, 257)} {
		r := valid
		r.Scope = scope
		cases = append(cases, r)
	}
	for _, d := range []time.Duration{-time.Second, time.Nanosecond, repository.MaxTTL + 1, 1<<63 - 1} {
		r := valid
		r.TTL = d
		cases = append(cases, r)
		r = valid
		r.Lifetime = d
		cases = append(cases, r)
	}
	for i, r := range cases {
		_, err := b.store.Issue(b.ctx, r)
		var inputErr *repository.InputError
		if !errors.Is(err, repository.ErrInvalidInput) || !errors.As(err, &inputErr) {
			t.Errorf("case %d (%.40q %.40q %.40q %.40q %v %v): got %v, want an *InputError", i, r.ClientID, r.UserID, r.Scope, r.SenderThumbprint, r.TTL, r.Lifetime, err)
		}
		if err != nil && len(err.Error()) > 200 {
			t.Errorf("case %d: error echoes its input (%d bytes)", i, len(err.Error()))
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("refused input changed the tables")
	}
	t.Logf("%d hostile Issue requests refused", len(cases))
}

func TestRotate_HostileRequestFieldsAreTypedErrorsAndChangeNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.issue(t)
	before := b.tableChecksum(t)
	valid := repository.RotateRequest{Token: tok.Token.Reveal(), ClientID: "client-a"}
	n := 0
	for name, v := range hostileStrings {
		for _, r := range []repository.RotateRequest{
			{Token: valid.Token, ClientID: v},
			{Token: valid.Token, ClientID: valid.ClientID, Scope: []string{v}},
			{Token: valid.Token, ClientID: valid.ClientID, SenderThumbprint: v + "!"},
		} {
			n++
			if _, err := b.store.Rotate(b.ctx, r); !errors.Is(err, repository.ErrInvalidInput) {
				t.Errorf("%s: got %v, want ErrInvalidInput", name, err)
			}
		}
	}
	for _, d := range []time.Duration{-1, time.Millisecond, repository.MaxTTL + 1} {
		n++
		if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: valid.Token, ClientID: valid.ClientID, TTL: d}); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("ttl %v: got %v", d, err)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("refused input changed the tables")
	}
	if _, err := b.store.Rotate(b.ctx, valid); err != nil {
		t.Fatalf("the token after %d refused requests: %v", n, err)
	}
}

func TestCodeAndState_HostileInputIsATypedErrorAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	before := b.tableChecksum(t)
	_, challenge := pkce(t)
	valid := repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, CodeChallenge: challenge, CodeChallengeMethod: "S256"}
	var codeCases []repository.CodeRequest
	for _, v := range hostileStrings {
		for _, set := range []func(*repository.CodeRequest){
			func(r *repository.CodeRequest) { r.RedirectURI = v },
			func(r *repository.CodeRequest) { r.ClientID = v },
			func(r *repository.CodeRequest) { r.CodeChallenge = v },
			func(r *repository.CodeRequest) { r.Resources = []string{v} },
		} {
			r := valid
			set(&r)
			codeCases = append(codeCases, r)
		}
	}
	for _, set := range []func(*repository.CodeRequest){
		func(r *repository.CodeRequest) { r.Nonce = strings.Repeat("n", 513) },
		func(r *repository.CodeRequest) { r.Nonce = "bad\x00nonce" },
		func(r *repository.CodeRequest) { r.Resources = []string{"https://api.example/#frag"} },
		func(r *repository.CodeRequest) { r.Resources = []string{"relative/path"} },
		func(r *repository.CodeRequest) { r.Session = []byte(`{"unterminated":`) },
		func(r *repository.CodeRequest) { r.Session = []byte("{\"nul\":\"\x00\"}") },
		func(r *repository.CodeRequest) { r.Session = []byte("{\"utf8\":\"\xff\"}") },
		func(r *repository.CodeRequest) { r.Session = []byte(`"` + strings.Repeat("s", 17<<10) + `"`) },
		func(r *repository.CodeRequest) { r.TTL = 11 * time.Minute },
		func(r *repository.CodeRequest) { r.TTL = -time.Second },
		func(r *repository.CodeRequest) { r.DPoPJKT = "not base64url!" },
	} {
		r := valid
		set(&r)
		codeCases = append(codeCases, r)
	}
	for i, r := range codeCases {
		if _, err := b.store.CreateCode(b.ctx, r); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("code case %d: %v, want ErrInvalidInput", i, err)
		}
	}
	for name, v := range hostileStrings {
		req := repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: v}
		if _, err := b.store.Exchange(b.ctx, req); !errors.Is(err, repository.ErrPKCEMismatch) {
			t.Errorf("verifier %s: %v, want ErrPKCEMismatch", name, err)
		}
		req = repository.ExchangeRequest{Code: v, ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier}
		if _, err := b.store.Exchange(b.ctx, req); !errors.Is(err, repository.ErrCodeNotFound) {
			t.Errorf("code %s: %v, want ErrCodeNotFound", name, err)
		}
		if _, err := b.store.ConsumeState(b.ctx, v); !errors.Is(err, repository.ErrStateNotFound) {
			t.Errorf("state %s: %v, want ErrStateNotFound", name, err)
		}
		if _, err := b.store.CreateState(b.ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: v}); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("state redirect %s: %v", name, err)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("refused input changed the tables")
	}
	if _, err := b.exchange(f); err != nil {
		t.Fatalf("the code after the refused requests: %v", err)
	}
}

// TestModel_JSONTheValidatorAcceptsIsStored checks the validator of Session and Data (the model of
// what the store accepts) against PostgreSQL, where they are stored as text under size checks:
// every value is either stored or refused with an *InputError ("invalid_request"), never a
// database error ("server_error"), and a refusal changes nothing.
func TestModel_JSONTheValidatorAcceptsIsStored(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.Logger = slog.New(slog.DiscardHandler) }})
	sum := sha256.Sum256([]byte(strings.Repeat("v", 43)))
	challenge := base64.RawURLEncoding.EncodeToString(sum[:])
	for _, c := range []struct{ name, json string }{
		{"object", `{"auth_time":1700000000,"amr":["pwd","otp"]}`},
		{"NUL escape", `{"a":"\u0000"}`},
		{"17 KiB", `"` + strings.Repeat("s", 17<<10) + `"`},
		{"deep nesting", strings.Repeat("[", 8000) + strings.Repeat("]", 8000)},
		{"invalid UTF-8", "{\"a\":\"\xff\"}"},
		{"unpaired surrogate escape", `{"a":"\ud800"}`},
		{"number beyond numeric", `{"a":1e131072}`},
		{"16,003 bytes compact", "[" + strings.Repeat("1,", 8000) + "1]"},
	} {
		for what, create := range map[string]func() error{
			"CreateCode Session": func() error {
				_, err := b.store.CreateCode(b.ctx, repository.CodeRequest{ClientID: "client-a", UserID: "user-1",
					RedirectURI: redirectURI, CodeChallenge: challenge, CodeChallengeMethod: "S256", Session: json.RawMessage(c.json)})
				return err
			},
			"CreateState Data": func() error {
				_, err := b.store.CreateState(b.ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI,
					Data: json.RawMessage(c.json)})
				return err
			},
		} {
			before := b.tableChecksum(t)
			err := create()
			if err != nil && !errors.Is(err, repository.ErrInvalidInput) {
				t.Errorf("%s %s (%d bytes): %v — an untyped error (ErrorCode %q), want success or an *InputError",
					what, c.name, len(c.json), err, repository.ErrorCode(err))
			}
			if err != nil && b.tableChecksum(t) != before {
				t.Errorf("%s %s: refused, but the tables changed", what, c.name)
			}
		}
	}
}
