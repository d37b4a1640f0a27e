package tests

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/oauthstore/oauthstore/repository"
	"github.com/oauthstore/oauthstore/schema"
)

// legacyToken is a refresh token as versions before schema 5 minted it: 32 random bytes, no
// family id, stored as HMAC-SHA-256 under a key derived from the pepper.
type legacyToken struct {
	raw    string
	digest []byte
}

func (b *bundle) legacyToken() legacyToken {
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	kdf := hmac.New(sha256.New, b.pepper)
	kdf.Write([]byte("oauthstore/v1/refresh-token"))
	mac := hmac.New(sha256.New, kdf.Sum(nil))
	mac.Write(raw[:])
	tok := legacyToken{raw: base64.RawURLEncoding.EncodeToString(raw[:]), digest: mac.Sum(nil)}
	b.rememberRaw(tok.raw)
	return tok
}

// sealFor seals successor for the holder of parent as schema 4 did: AES-256-GCM under HKDF-SHA-256 of
// the raw parent, salted with a key derived from the pepper, both digests the associated data.
func (b *bundle) sealFor(t *testing.T, parent, successor legacyToken) []byte {
	t.Helper()
	saltMAC := hmac.New(sha256.New, b.pepper)
	saltMAC.Write([]byte("oauthstore/v1/grace-salt/refresh-token"))
	rawParent, _ := base64.RawURLEncoding.DecodeString(parent.raw)
	rawSuccessor, _ := base64.RawURLEncoding.DecodeString(successor.raw)
	key, err := hkdf.Key(sha256.New, rawParent, saltMAC.Sum(nil), "oauthstore/v1/grace-successor", 32)
	if err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	aad := append(append([]byte("oauthstore/v1/grace-successor\x00"), parent.digest...), successor.digest...)
	return aead.Seal(nonce, nonce, rawSuccessor, aad)
}

func TestMigration5_TokensMintedBeforeItKeepWorking(t *testing.T) {
	t.Parallel()
	b := setup(t, withGrace(time.Minute, 3))
	m, err := schema.NewMigrator(b.pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Migrate.Migrate(4); err != nil {
		t.Fatalf("down to 4: %v", err)
	}
	now := b.clock.Now()
	// Three families as schema 4 held them: a rotated one (a tombstone and its live successor), one
	// never rotated, and one rotated 10 s ago whose client lost the response.
	rotatedParent, rotatedLive := b.legacyToken(), b.legacyToken()
	single := b.legacyToken()
	lostParent, lostLive := b.legacyToken(), b.legacyToken()
	sealedParent, sealedLive := b.legacyToken(), b.legacyToken()
	var rotated, unrotated, lost, sealed string
	family := func(id *string, rotatedAt *time.Time, count int) {
		t.Helper()
		if err := b.pool.QueryRow(b.ctx, `INSERT INTO oauth_family (client_id, user_id, scope, created_at, last_rotated_at,
				rotation_count, idle_expires_at)
			VALUES ('client-a', 'user-1', '{openid}', $1, $2, $3, $4) RETURNING id::text`,
			now.Add(-time.Hour), rotatedAt, count, now.Add(23*time.Hour)).Scan(id); err != nil {
			t.Fatal(err)
		}
	}
	token := func(tok legacyToken, familyID string, parent []byte, created time.Time, consumed *time.Time) {
		t.Helper()
		if _, err := b.pool.Exec(b.ctx, `INSERT INTO oauth_refresh_token (digest, pepper_id, family_id, parent_digest, scope,
				created_at, expires_at, consumed_at)
			VALUES ($1, 'default', $2, $3, '{openid}', $4, $5, $6)`,
			tok.digest, familyID, parent, created, created.Add(24*time.Hour), consumed); err != nil {
			t.Fatal(err)
		}
	}
	tenSecondsAgo, anHourAgo := now.Add(-10*time.Second), now.Add(-time.Hour)
	family(&rotated, &anHourAgo, 1)
	token(rotatedParent, rotated, nil, now.Add(-2*time.Hour), &anHourAgo)
	token(rotatedLive, rotated, rotatedParent.digest, anHourAgo, nil)
	family(&unrotated, nil, 0)
	token(single, unrotated, nil, now.Add(-time.Hour), nil)
	family(&lost, &tenSecondsAgo, 1)
	token(lostParent, lost, nil, now.Add(-time.Hour), &tenSecondsAgo)
	token(lostLive, lost, lostParent.digest, tenSecondsAgo, nil)
	// A lost response whose successor schema 4 sealed for the parent's holder, resent twice already.
	family(&sealed, &tenSecondsAgo, 1)
	token(sealedParent, sealed, nil, now.Add(-time.Hour), &tenSecondsAgo)
	token(sealedLive, sealed, sealedParent.digest, tenSecondsAgo, nil)
	if _, err := b.pool.Exec(b.ctx, `UPDATE oauth_refresh_token SET grace_uses = 2 WHERE digest = $1`, sealedParent.digest); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE oauth_refresh_token SET grace_ciphertext = $2 WHERE digest = $1`,
		sealedLive.digest, b.sealFor(t, sealedParent, sealedLive)); err != nil {
		t.Fatal(err)
	}

	if err := m.Up(); err != nil {
		t.Fatalf("up to 5: %v", err)
	}
	b.checkInvariants(t, "after migration 5")
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token_legacy"); n != 7 {
		t.Fatalf("%d legacy digests, want 7", n)
	}
	if n := b.count(t, "SELECT parent_reuses FROM oauth_family WHERE id = $1", sealed); n != 2 {
		t.Fatalf("the parent's grace reuses after the migration: %d, want 2", n)
	}

	// The live token of a rotated family rotates, into a token that carries its family.
	next, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: rotatedLive.raw, ClientID: "client-a"})
	if err != nil || next.FamilyID != rotated || len(next.Token.Reveal()) != 64 {
		t.Fatalf("rotating a legacy live token: %+v, %v", next, err)
	}
	b.remember(next.Token)
	if _, err := b.rotate(next.Token, "client-a"); err != nil {
		t.Fatalf("rotating its successor: %v", err)
	}
	// Its tombstone from before the migration is still recognised: a replay revokes the family.
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: rotatedParent.raw, ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("replaying a tombstone from before the migration: %v, want ErrReplayDetected", err)
	}
	if f := b.family(t, rotated); f.RevokedAt == nil {
		t.Fatal("the replay did not revoke the family")
	}

	// A never-rotated family: Lookup, Peek and RevokeToken find it by its legacy token.
	info, err := b.store.Peek(b.ctx, single.raw, "client-a")
	if err != nil || info.FamilyID != unrotated || info.ConsumedAt != nil {
		t.Fatalf("peek of a legacy live token: %+v, %v", info, err)
	}
	if err := b.store.RevokeToken(b.ctx, single.raw, "client-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: single.raw, ClientID: "client-a"}); !errors.Is(err, repository.ErrFamilyRevoked) {
		t.Fatalf("rotating a revoked legacy token: %v, want ErrFamilyRevoked", err)
	}

	// A lost response from before the migration: the parent presented again within the grace
	// window gets a working token (its successor had no sealed copy, so it is replaced), and the
	// family keeps one live token.
	again, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: lostParent.raw, ClientID: "client-a"})
	if err != nil || again.FamilyID != lost {
		t.Fatalf("grace resend of a legacy parent: %+v, %v", again, err)
	}
	b.remember(again.Token)
	if _, err := b.rotate(again.Token, "client-a"); err != nil {
		t.Fatalf("rotating what the resend got: %v", err)
	}
	if n := b.liveTokens(t, lost); n != 1 {
		t.Fatalf("%d live tokens, want 1", n)
	}
	// The token the resend replaced is consumed: presenting it is a replay.
	if _, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: lostLive.raw, ClientID: "client-a"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("the replaced token: %v, want ErrReplayDetected", err)
	}

	// The successor schema 4 sealed is handed out again, the same token, and the reuse is counted.
	same, err := b.store.Rotate(b.ctx, repository.RotateRequest{Token: sealedParent.raw, ClientID: "client-a"})
	if err != nil || same.Token.Reveal() != sealedLive.raw {
		t.Fatalf("grace resend of a parent whose successor schema 4 sealed: %v; the same token back: %v", err, err == nil && same.Token.Reveal() == sealedLive.raw)
	}
	if n := b.count(t, "SELECT parent_reuses FROM oauth_family WHERE id = $1", sealed); n != 3 {
		t.Fatalf("the parent's grace reuses after a resend: %d, want 3", n)
	}

	// Deleting a family deletes its legacy digests.
	if err := b.store.DeleteFamily(b.ctx, lost); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, "SELECT count(*) FROM oauth_refresh_token_legacy WHERE family_id = $1", lost); n != 0 {
		t.Fatalf("%d legacy digests of a deleted family remain", n)
	}
	b.checkInvariants(t, "after the legacy tokens were used")
}
