package tests

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
)

func TestExchange_CreatesTheFamilyAndRecordsItOnTheCode(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	if want := b.clock.Now().Add(repository.DefaultCodeTTL); !f.code.ExpiresAt.Equal(want) {
		t.Fatalf("code expires %v, want %v (60 s default)", f.code.ExpiresAt, want)
	}
	got, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	if got.UserID != "user-1" || got.ClientID != "client-a" || !slices.Equal(got.Scope, []string{"openid", "offline_access"}) ||
		got.Nonce != "n-0S6_WzA2Mj" || !slices.Equal(got.Resources, []string{"https://mcp.example/api"}) ||
		!strings.Contains(string(got.Session), `"acr"`) || got.RedirectURI != redirectURI {
		t.Fatalf("exchange result: %+v", got)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_authorization_code WHERE family_id = $1 AND consumed_at IS NOT NULL", got.FamilyID); n != 1 {
		t.Fatal("the code does not record the family it produced")
	}
	if _, err := b.rotate(got.Token, "client-a"); err != nil {
		t.Fatalf("the first refresh token does not rotate: %v", err)
	}
}

func TestExchange_SixteenConcurrentExchangesOfOneCodeHaveOneWinner(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOptions{realClock: true})
	const trials, racers = 25, 16
	for range trials {
		f := b.createCode(t)
		errs := race(racers, func(int) error {
			_, err := b.exchange(f)
			return err
		})
		winners, _, unexpected := countWinners(errs, repository.ErrInvalidGrant)
		for _, err := range unexpected {
			t.Fatalf("a racer got %v, want an invalid grant", err)
		}
		if winners != 1 {
			t.Fatalf("%d exchanges succeeded, want exactly 1", winners)
		}
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family"); n != trials {
		t.Fatalf("%d families for %d codes", n, trials)
	}
}

func TestExchange_ConcurrentWrongVerifiersNeverSucceed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	before := b.tableChecksum(t)
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wrong := f
			wrong.verifier = strings.Repeat("x", 43+i)
			_, errs[i] = b.exchange(wrong)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, repository.ErrPKCEMismatch) {
			t.Fatalf("wrong verifier %d: %v, want ErrPKCEMismatch", i, err)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("wrong verifiers changed the tables")
	}
	// A failed verification does not burn the code.
	if _, err := b.exchange(f); err != nil {
		t.Fatalf("the right verifier after 16 wrong ones: %v", err)
	}
}

func TestExchange_WrongClientOrRedirectNeverYieldsTokens(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	before := b.tableChecksum(t)
	for name, c := range map[string]struct {
		req  repository.ExchangeRequest
		want error
	}{
		"wrong client":       {repository.ExchangeRequest{ClientID: "client-b", RedirectURI: redirectURI, CodeVerifier: f.verifier}, repository.ErrWrongClient},
		"wrong redirect":     {repository.ExchangeRequest{ClientID: "client-a", RedirectURI: redirectURI + "/x", CodeVerifier: f.verifier}, repository.ErrRedirectMismatch},
		"redirect case":      {repository.ExchangeRequest{ClientID: "client-a", RedirectURI: strings.ToUpper(redirectURI), CodeVerifier: f.verifier}, repository.ErrRedirectMismatch},
		"no verifier":        {repository.ExchangeRequest{ClientID: "client-a", RedirectURI: redirectURI}, repository.ErrPKCEMismatch},
		"challenge as plain": {repository.ExchangeRequest{ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: strings.Repeat("A", 43)}, repository.ErrPKCEMismatch},
		"other code":         {repository.ExchangeRequest{ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier, Code: strings.Repeat("A", 43)}, repository.ErrCodeNotFound},
	} {
		req := c.req
		if req.Code == "" {
			req.Code = f.code.Code.Reveal()
		}
		_, err := b.store.Exchange(b.ctx, req)
		if !errors.Is(err, c.want) || !errors.Is(err, repository.ErrInvalidGrant) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if b.tableChecksum(t) != before {
		t.Fatal("refused exchanges changed the tables")
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_family"); n != 0 {
		t.Fatalf("%d families from refused exchanges", n)
	}
	if _, err := b.exchange(f); err != nil {
		t.Fatalf("the right request after refused ones: %v", err)
	}
}

func TestExchange_ExpiredCodeRefusedWhileItsRowExists(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	b.clock.Advance(repository.DefaultCodeTTL)
	before := b.tableChecksum(t)
	if _, err := b.exchange(f); !errors.Is(err, repository.ErrCodeExpired) {
		t.Fatalf("expired code: %v, want ErrCodeExpired", err)
	}
	if b.count(t, "SELECT count(*) FROM oauth_authorization_code") != 1 || b.tableChecksum(t) != before {
		t.Fatal("the expired code's row is gone or the tables changed")
	}
}

func TestExchange_ReplayAfterSuccessRevokesTheProducedFamily(t *testing.T) {
	t.Parallel()
	events := &eventLog{}
	b := setup(t, setupOptions{configure: func(c *repository.Config) { c.OnEvent = events.add }})
	f := b.createCode(t)
	got, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	next, err := b.rotate(got.Token, "client-a")
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(10 * time.Second)
	if _, err := b.exchange(f); !errors.Is(err, repository.ErrCodeReplayDetected) || !errors.Is(err, repository.ErrInvalidGrant) {
		t.Fatalf("code replay: %v, want ErrCodeReplayDetected", err)
	}
	if fam := b.family(t, got.FamilyID); fam.RevokedAt == nil || fam.RevokedReason != repository.ReasonCodeReplayDetected {
		t.Fatalf("family after the code replay: %+v", fam)
	}
	if _, err := b.rotate(next.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("refresh token of the replayed code: %v, want ErrFamilyRevoked", err)
	}
	if !events.has(repository.EventCodeReplayDetected, got.FamilyID) {
		t.Fatalf("no code replay event: %+v", events.all())
	}
	// Still detected, and still an invalid grant, the second time.
	if _, err := b.exchange(f); !errors.Is(err, repository.ErrCodeReplayDetected) {
		t.Fatalf("second replay: %v", err)
	}
}

func TestExchange_ReplayIsStillDetectedAfterCleanupWhileTheFamilyLives(t *testing.T) {
	t.Parallel()
	b := setup(t)
	f := b.createCode(t)
	unused := b.createCode(t)
	got, err := b.exchange(f)
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Hour) // both codes long expired; the family's token lives 24 h
	res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.AuthorizationCodes != 1 || res.Families != 0 {
		t.Fatalf("cleanup: %+v, want the unused code deleted and the family kept", res)
	}
	if _, err := b.exchange(unused); !errors.Is(err, repository.ErrCodeNotFound) {
		t.Fatalf("cleaned-up unused code: %v", err)
	}
	if _, err := b.exchange(f); !errors.Is(err, repository.ErrCodeReplayDetected) {
		t.Fatalf("replay after cleanup: %v, want ErrCodeReplayDetected", err)
	}
	if _, err := b.rotate(got.Token, "client-a"); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("family after the replay: %v", err)
	}
	// Once the family is cleaned up, its code goes with it.
	b.clock.Advance(48 * time.Hour)
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.Families != 1 {
		t.Fatalf("final cleanup: %+v, %v", res, err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_authorization_code"); n != 0 {
		t.Fatalf("%d codes outlived their family", n)
	}
}

func TestExchange_PKCEIsRequiredPlainRefusedAndDowngradeDetected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for name, m := range map[string]func(*repository.CodeRequest){
		"no challenge": func(r *repository.CodeRequest) { r.CodeChallenge, r.CodeChallengeMethod = "", "" },
		"plain": func(r *repository.CodeRequest) {
			r.CodeChallenge, r.CodeChallengeMethod = strings.Repeat("p", 43), "plain"
		},
		"unknown method": func(r *repository.CodeRequest) { r.CodeChallengeMethod = "S512" },
		"short S256":     func(r *repository.CodeRequest) { r.CodeChallenge = r.CodeChallenge[:42] },
	} {
		req := repository.CodeRequest{ClientID: "c", UserID: "u", RedirectURI: redirectURI, CodeChallenge: strings.Repeat("c", 43), CodeChallengeMethod: "S256"}
		m(&req)
		if _, err := b.store.CreateCode(b.ctx, req); !errors.Is(err, repository.ErrInvalidInput) {
			t.Errorf("%s: %v, want ErrInvalidInput", name, err)
		}
	}
	lax := setup(t, setupOptions{configure: func(c *repository.Config) { c.PKCEOptional, c.AllowPlainPKCE = true, true }})
	noPKCE := lax.createCode(t, func(r *repository.CodeRequest) { r.CodeChallenge, r.CodeChallengeMethod = "", "" })
	if _, err := lax.exchange(noPKCE); !errors.Is(err, repository.ErrPKCEMismatch) {
		t.Fatalf("verifier sent for a code without challenge: %v, want ErrPKCEMismatch (downgrade)", err)
	}
	noPKCE.verifier = ""
	if _, err := lax.exchange(noPKCE); err != nil {
		t.Fatalf("code without PKCE when PKCE is optional: %v", err)
	}
	plain := lax.createCode(t, func(r *repository.CodeRequest) {
		r.CodeChallenge, r.CodeChallengeMethod = strings.Repeat("p", 43), "plain"
	})
	plain.verifier = strings.Repeat("p", 43)
	if _, err := lax.exchange(plain); err != nil {
		t.Fatalf("plain PKCE when allowed: %v", err)
	}
}

func TestExchange_DPoPBoundCodeNeedsTheSameKeyAndBindsTheFamily(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	f := b.createCode(t, func(r *repository.CodeRequest) { r.DPoPJKT = jkt })
	req := repository.ExchangeRequest{Code: f.code.Code.Reveal(), ClientID: "client-a", RedirectURI: redirectURI, CodeVerifier: f.verifier}
	for _, key := range []string{"", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"} {
		req.SenderThumbprint = key
		if _, err := b.store.Exchange(b.ctx, req); !errors.Is(err, repository.ErrSenderMismatch) {
			t.Fatalf("key %q: %v, want ErrSenderMismatch", key, err)
		}
	}
	req.SenderThumbprint = jkt
	got, err := b.store.Exchange(b.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.rotate(got.Token, "client-a"); !errors.Is(err, repository.ErrSenderMismatch) {
		t.Fatalf("rotation of the bound family without the key: %v", err)
	}
}

func TestState_IsConsumedExactlyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st, err := b.store.CreateState(b.ctx, repository.StateRequest{
		ClientID: "client-a", RedirectURI: redirectURI, ReturnTo: "https://app.example/settings", Data: json.RawMessage(`{"provider":"upstream"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		bindings []*repository.StateBinding
		others   []error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := b.store.ConsumeState(b.ctx, st.State.Reveal())
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				bindings = append(bindings, got)
			} else {
				others = append(others, err)
			}
		}()
	}
	wg.Wait()
	if len(bindings) != 1 {
		t.Fatalf("%d consumes succeeded, want 1", len(bindings))
	}
	for _, err := range others {
		if !errors.Is(err, repository.ErrStateNotFound) {
			t.Fatalf("loser: %v", err)
		}
	}
	got := bindings[0]
	if got.ClientID != "client-a" || got.RedirectURI != redirectURI || got.ReturnTo != "https://app.example/settings" || !strings.Contains(string(got.Data), "upstream") {
		t.Fatalf("binding: %+v", got)
	}
	// An expired state is refused while its row exists, then cleaned up.
	old, err := b.store.CreateState(b.ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Minute)
	if _, err := b.store.ConsumeState(b.ctx, old.State.Reveal()); !errors.Is(err, repository.ErrStateNotFound) {
		t.Fatalf("expired state: %v", err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_state"); n != 1 {
		t.Fatalf("%d state rows, want the expired one", n)
	}
	b.clock.Advance(time.Second)
	if res, err := b.store.Cleanup(b.ctx, repository.CleanupOptions{}); err != nil || res.States != 1 {
		t.Fatalf("cleanup of the expired state: %+v, %v", res, err)
	}
}

// chosenCode is a code value of the shape a framework mints itself: zitadel/oidc's op sends a JWE
// compact serialization (five base64url parts joined by dots), much longer than a minted code.
func chosenCode(t *testing.T) string {
	t.Helper()
	part := func(n int) string {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return part(60) + "." + part(40) + "." + part(12) + "." + part(48) + "." + part(16)
}

func TestSaveCode_AChosenCodeIsKeptAsItsDigestExchangedOnceAndItsReplayRevokes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code := chosenCode(t)
	b.rememberRaw(code)
	authTime := b.clock.Now().Add(-time.Minute)
	expires, err := b.store.SaveCode(b.ctx, code, repository.CodeRequest{
		ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, Scope: []string{"openid", "offline_access"},
		Nonce: "n-1", Session: json.RawMessage(`{"code_challenge":"kept-by-the-framework"}`),
		Claims: repository.Claims{AuthTime: &authTime, AMR: []string{"pwd"}, SessionID: "sid-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := b.clock.Now().Add(repository.DefaultCodeTTL); !expires.Equal(want) {
		t.Fatalf("expires %v, want %v", expires, want)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_authorization_code WHERE code_challenge IS NULL AND octet_length(digest) = 32"); n != 1 {
		t.Fatalf("%d codes stored as a digest without a challenge, want 1", n)
	}
	info, err := b.store.LookupCode(b.ctx, code)
	if err != nil {
		t.Fatal(err)
	}
	if info.ClientID != "client-a" || info.UserID != "user-1" || info.RedirectURI != redirectURI || info.Nonce != "n-1" ||
		info.PKCE || info.ConsumedAt != nil || info.FamilyID != "" || info.Expired ||
		!strings.Contains(string(info.Session), "kept-by-the-framework") || info.Claims.SessionID != "sid-1" ||
		info.Claims.AuthTime == nil || !info.Claims.AuthTime.Equal(authTime) || !slices.Equal(info.Claims.AMR, []string{"pwd"}) {
		t.Fatalf("lookup before the exchange: %+v", info)
	}
	// A verifier for a code stored without a challenge is a downgrade, refused without burning it.
	req := repository.ExchangeRequest{Code: code, ClientID: "client-a", RedirectURI: redirectURI}
	downgrade := req
	downgrade.CodeVerifier = strings.Repeat("v", 43)
	if _, err := b.store.Exchange(b.ctx, downgrade); !errors.Is(err, repository.ErrPKCEMismatch) {
		t.Fatalf("verifier for a code without a challenge: %v, want ErrPKCEMismatch", err)
	}
	got, err := b.store.Exchange(b.ctx, req)
	if err != nil {
		t.Fatalf("exchange of the saved code: %v", err)
	}
	b.remember(got.Token)
	if got.Claims.SessionID != "sid-1" || got.UserID != "user-1" {
		t.Fatalf("the family does not take the code's grant: %+v", got.Grant)
	}
	info, err = b.store.LookupCode(b.ctx, code)
	if err != nil || info.ConsumedAt == nil || info.FamilyID != got.FamilyID {
		t.Fatalf("lookup after the exchange: %+v, %v", info, err)
	}
	if _, err := b.store.Exchange(b.ctx, req); !errors.Is(err, repository.ErrCodeReplayDetected) {
		t.Fatalf("second exchange: %v, want ErrCodeReplayDetected", err)
	}
	if fam := b.family(t, got.FamilyID); fam.RevokedAt == nil || fam.RevokedReason != repository.ReasonCodeReplayDetected {
		t.Fatalf("family after the replay: %+v", fam)
	}
	if info, err := b.store.LookupCode(b.ctx, code); err != nil || info.FamilyRevokedAt == nil {
		t.Fatalf("lookup after the replay: %+v, %v", info, err)
	}
}

func TestSaveCode_WithAChallengeExchangeVerifiesIt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code := chosenCode(t)
	b.rememberRaw(code)
	verifier, challenge := pkce(t)
	if _, err := b.store.SaveCode(b.ctx, code, repository.CodeRequest{
		ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, CodeChallenge: challenge, CodeChallengeMethod: "S256",
	}); err != nil {
		t.Fatal(err)
	}
	if info, err := b.store.LookupCode(b.ctx, code); err != nil || !info.PKCE {
		t.Fatalf("lookup: %+v, %v", info, err)
	}
	req := repository.ExchangeRequest{Code: code, ClientID: "client-a", RedirectURI: redirectURI}
	if _, err := b.store.Exchange(b.ctx, req); !errors.Is(err, repository.ErrPKCEMismatch) {
		t.Fatalf("exchange without the verifier: %v, want ErrPKCEMismatch", err)
	}
	req.CodeVerifier = verifier
	got, err := b.store.Exchange(b.ctx, req)
	if err != nil {
		t.Fatalf("exchange with the verifier: %v", err)
	}
	b.remember(got.Token)
}

func TestSaveCode_RefusesMalformedValuesAndDuplicatesAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code := chosenCode(t)
	b.rememberRaw(code)
	valid := repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI}
	if _, err := b.store.SaveCode(b.ctx, code, valid); err != nil {
		t.Fatal(err)
	}
	before := b.tableChecksum(t)
	cases := map[string]struct {
		code string
		req  repository.CodeRequest
	}{
		"short":           {strings.Repeat("a", repository.MinChosenCodeLen-1), valid},
		"long":            {strings.Repeat("a", repository.MaxChosenCodeLen+1), valid},
		"space":           {strings.Repeat("a", 20) + " " + strings.Repeat("a", 20), valid},
		"NUL":             {strings.Repeat("a", 20) + "\x00" + strings.Repeat("a", 20), valid},
		"non-ASCII":       {strings.Repeat("a", 40) + "é", valid},
		"duplicate":       {code, valid},
		"bad challenge":   {chosenCode(t), repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, CodeChallenge: "short", CodeChallengeMethod: "S256"}},
		"method alone":    {chosenCode(t), repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI, CodeChallengeMethod: "S256"}},
		"no client":       {chosenCode(t), repository.CodeRequest{UserID: "user-1", RedirectURI: redirectURI}},
		"relative target": {chosenCode(t), repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: "/callback"}},
	}
	for name, c := range cases {
		_, err := b.store.SaveCode(b.ctx, c.code, c.req)
		var ie *repository.InputError
		if !errors.As(err, &ie) || repository.ErrorCode(err) != "invalid_request" {
			t.Errorf("%s: %v, want an *InputError", name, err)
		}
	}
	if after := b.tableChecksum(t); after != before {
		t.Fatal("a refused SaveCode changed the tables")
	}
	for _, bad := range []string{"", "short", strings.Repeat("a", 40) + " "} {
		if _, err := b.store.LookupCode(b.ctx, bad); !errors.Is(err, repository.ErrCodeNotFound) {
			t.Errorf("lookup of a malformed code: %v, want ErrCodeNotFound", err)
		}
	}
	if _, err := b.store.LookupCode(b.ctx, chosenCode(t)); !errors.Is(err, repository.ErrCodeNotFound) {
		t.Errorf("lookup of an unknown code: %v, want ErrCodeNotFound", err)
	}
}

func TestSaveCode_ACodeSavedUnderAnOlderPepperIsStillExchanged(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code := chosenCode(t)
	b.rememberRaw(code)
	if _, err := b.store.SaveCode(b.ctx, code, repository.CodeRequest{ClientID: "client-a", UserID: "user-1", RedirectURI: redirectURI}); err != nil {
		t.Fatal(err)
	}
	newer := make([]byte, 32)
	_, _ = rand.Read(newer)
	rotated, err := repository.New(b.pool, repository.Config{
		Peppers: []repository.Pepper{{ID: "newer", Secret: repository.NewKey(newer)}, {ID: "default", Secret: repository.NewKey(b.pepper)}},
		Clock:   b.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := rotated.LookupCode(b.ctx, code)
	if err != nil || info.PepperID != "default" {
		t.Fatalf("lookup under the newer ring: %+v, %v", info, err)
	}
	got, err := rotated.Exchange(b.ctx, repository.ExchangeRequest{Code: code, ClientID: "client-a", RedirectURI: redirectURI})
	if err != nil {
		t.Fatalf("exchange under the newer ring: %v", err)
	}
	b.remember(got.Token)
}

func TestPeekState_ReadsWithoutConsumingUntilConsumedOrExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	st, err := b.store.CreateState(b.ctx, repository.StateRequest{
		ClientID: "client-a", RedirectURI: redirectURI, Data: json.RawMessage(`{"login":"pending"}`), TTL: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(st.State)
	for i := range 3 {
		got, err := b.store.PeekState(b.ctx, st.State.Reveal())
		if err != nil || got.ClientID != "client-a" || got.RedirectURI != redirectURI || string(got.Data) != `{"login":"pending"}` ||
			!got.ExpiresAt.Equal(st.ExpiresAt) {
			t.Fatalf("peek %d: %+v, %v", i, got, err)
		}
	}
	if _, err := b.store.ConsumeState(b.ctx, st.State.Reveal()); err != nil {
		t.Fatalf("consume after peeks: %v", err)
	}
	if _, err := b.store.PeekState(b.ctx, st.State.Reveal()); !errors.Is(err, repository.ErrStateNotFound) {
		t.Fatalf("peek after the consume: %v, want ErrStateNotFound", err)
	}
	old, err := b.store.CreateState(b.ctx, repository.StateRequest{ClientID: "client-a", RedirectURI: redirectURI, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b.remember(old.State)
	b.clock.Advance(time.Minute)
	if _, err := b.store.PeekState(b.ctx, old.State.Reveal()); !errors.Is(err, repository.ErrStateNotFound) {
		t.Fatalf("peek of an expired state: %v, want ErrStateNotFound", err)
	}
	for _, bad := range []string{"", "not-a-state", strings.Repeat("A", 43)} {
		if _, err := b.store.PeekState(b.ctx, bad); !errors.Is(err, repository.ErrStateNotFound) {
			t.Fatalf("peek of %q: %v, want ErrStateNotFound", bad, err)
		}
	}
}
