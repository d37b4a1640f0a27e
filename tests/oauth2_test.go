package tests

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauthstore/oauthstore/repository"
)

// The real client against a token endpoint built on the library, with the library's defaults:
// golang.org/x/oauth2 resends a failed refresh with the other client-authentication style, and
// two processes or tabs may hold and refresh the same token.

// tokenEndpoint is a minimal RFC 6749 token endpoint for grant_type=refresh_token. dropNext makes
// it lose the next response after the rotation has committed, as a broken connection does.
type tokenEndpoint struct {
	store    *repository.Store
	dropNext atomic.Bool
	served   atomic.Int64
	dropped  atomic.Int64
}

const (
	e2eClient = "e2e-client"
	e2eSecret = "e2e-secret"
)

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	if id != e2eClient || secret != e2eSecret {
		writeOAuthError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	if r.PostFormValue("grant_type") != "refresh_token" {
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	next, err := e.store.Rotate(r.Context(), repository.RotateRequest{Token: r.PostFormValue("refresh_token"), ClientID: id})
	if err != nil {
		writeOAuthError(w, http.StatusBadRequest, repository.ErrorCode(err))
		return
	}
	e.served.Add(1)
	if e.dropNext.CompareAndSwap(true, false) {
		// The rotation committed; the client never hears of it.
		e.dropped.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": rand.Text(), "token_type": "Bearer", "expires_in": 1, // every Token() call refreshes
		"refresh_token": next.Token.Reveal(),
	})
}

func writeOAuthError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
}

// e2eSetup starts the endpoint on a store with the library's defaults, and a family whose first
// token the client holds.
func e2eSetup(t *testing.T) (*bundle, *tokenEndpoint, *oauth2.Config, *repository.RefreshToken) {
	t.Helper()
	b := setup(t, setupOptions{realClock: true})
	store, err := repository.New(b.pool, repository.Config{Pepper: repository.NewKey(b.pepper), Logger: slog.New(slog.NewJSONHandler(b.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &tokenEndpoint{store: store}
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	first, err := store.Issue(b.ctx, repository.IssueRequest{ClientID: e2eClient, UserID: "e2e-user", Scope: []string{"openid", "offline_access"}})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(first.Token)
	// A fresh Config: its client-authentication style is not known yet (AuthStyleAutoDetect).
	conf := &oauth2.Config{ClientID: e2eClient, ClientSecret: e2eSecret, Endpoint: oauth2.Endpoint{TokenURL: srv.URL + "/token"}}
	return b, e, conf, first
}

func expired(refresh string) *oauth2.Token {
	return &oauth2.Token{RefreshToken: refresh, Expiry: time.Now().Add(-time.Hour)}
}

// refreshes calls Token on ts n times, each a refresh, and returns the last token.
func refreshes(t *testing.T, b *bundle, ts oauth2.TokenSource, n int) *oauth2.Token {
	t.Helper()
	var tok *oauth2.Token
	for i := range n {
		var err error
		if tok, err = ts.Token(); err != nil {
			t.Fatalf("refresh %d: %v", i+1, err)
		}
		b.rememberRaw(tok.RefreshToken, tok.AccessToken)
	}
	return tok
}

func (b *bundle) assertAliveWithOneLiveToken(t *testing.T, familyID string) {
	t.Helper()
	if f := b.family(t, familyID); f.RevokedAt != nil {
		t.Fatalf("family revoked: %s", f.RevokedReason)
	}
	if n := b.liveTokens(t, familyID); n != 1 {
		t.Fatalf("family holds %d unconsumed tokens, want 1", n)
	}
}

func TestOAuth2Client_ALostRefreshResponseAndTheClientsResendKeepTheSession(t *testing.T) {
	t.Parallel()
	b, e, conf, first := e2eSetup(t)
	e.dropNext.Store(true)
	ts := conf.TokenSource(b.ctx, expired(first.Token.Reveal()))
	// The first refresh commits, its response is lost, and x/oauth2 resends the same refresh token
	// with the other authentication style on its own: the resend gets the same successor.
	refreshes(t, b, ts, 1)
	if e.dropped.Load() != 1 || e.served.Load() != 2 {
		t.Fatalf("%d responses lost and %d rotations served, want 1 lost and 2 served: the client did not resend", e.dropped.Load(), e.served.Load())
	}
	refreshes(t, b, ts, 5)
	b.assertAliveWithOneLiveToken(t, first.FamilyID)
	if n := b.family(t, first.FamilyID).RotationCount; n != 6 {
		t.Fatalf("%d rotations, want 6: the resend must not have rotated again", n)
	}
}

func TestOAuth2Client_TwoTokenSourcesRefreshingTheSameTokenBothKeepTheSession(t *testing.T) {
	t.Parallel()
	b, _, conf, first := e2eSetup(t)
	sources := []oauth2.TokenSource{
		conf.TokenSource(b.ctx, expired(first.Token.Reveal())),
		conf.TokenSource(b.ctx, expired(first.Token.Reveal())),
	}
	got := make([]*oauth2.Token, 2)
	for i, err := range race(2, func(i int) (err error) {
		got[i], err = sources[i].Token()
		return err
	}) {
		if err != nil {
			t.Fatalf("source %d: %v", i, err)
		}
	}
	if got[0].RefreshToken != got[1].RefreshToken {
		t.Fatal("the two sources got different refresh tokens: the family forked")
	}
	b.assertAliveWithOneLiveToken(t, first.FamilyID)
	// Both keep refreshing, in turn: each time one presents the token the other has just rotated,
	// within the window, and gets the same successor.
	for round := range 4 {
		for i, ts := range sources {
			tok, err := ts.Token()
			if err != nil {
				t.Fatalf("round %d, source %d: %v", round, i, err)
			}
			got[i] = tok
		}
		if got[0].RefreshToken != got[1].RefreshToken {
			t.Fatalf("round %d: the sources hold different tokens", round)
		}
	}
	b.assertAliveWithOneLiveToken(t, first.FamilyID)
}

func TestOAuth2Client_ATokenFromTwoRotationsBackRevokesTheFamily(t *testing.T) {
	t.Parallel()
	b, _, conf, first := e2eSetup(t)
	last := refreshes(t, b, conf.TokenSource(b.ctx, expired(first.Token.Reveal())), 2)
	_, err := conf.TokenSource(b.ctx, expired(first.Token.Reveal())).Token()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Fatalf("the grandparent: %v, want invalid_grant", err)
	}
	if f := b.family(t, first.FamilyID); f.RevokedAt == nil || f.RevokedReason != repository.ReasonReplayDetected {
		t.Fatalf("family after the grandparent's replay: %+v", f)
	}
	if _, err := conf.TokenSource(b.ctx, expired(last.RefreshToken)).Token(); err == nil {
		t.Fatal("the current token still refreshes after the replay")
	}
}
