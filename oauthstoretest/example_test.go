package oauthstoretest_test

import (
	"errors"
	"testing"

	"github.com/oauthstore/oauthstore/oauthstoretest"
	"github.com/oauthstore/oauthstore/repository"
)

func TestMain(m *testing.M) { oauthstoretest.Main(m) }

// A service's test gets a real store in one line: here, the replay of a token two rotations back
// revokes its family.
func TestNewStore_ARealStoreInOneLine(t *testing.T) {
	store := oauthstoretest.NewStore(t, repository.Config{})
	ctx := t.Context()
	first, err := store.Issue(ctx, repository.IssueRequest{ClientID: "app", UserID: "u-1"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Rotate(ctx, repository.RotateRequest{Token: second.Token.Reveal(), ClientID: "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Rotate(ctx, repository.RotateRequest{Token: first.Token.Reveal(), ClientID: "app"}); !errors.Is(err, repository.ErrReplayDetected) {
		t.Fatalf("the grandparent: %v, want ErrReplayDetected", err)
	}
}

func TestNewStore_EachTestHasADatabaseOfItsOwn(t *testing.T) {
	a, b := oauthstoretest.NewStore(t, repository.Config{}), oauthstoretest.NewStore(t, repository.Config{})
	ctx := t.Context()
	tok, err := a.Issue(ctx, repository.IssueRequest{ClientID: "app", UserID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Family(ctx, tok.FamilyID); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Family(ctx, tok.FamilyID); !errors.Is(err, repository.ErrFamilyNotFound) {
		t.Fatalf("another test's database holds the family: %v", err)
	}
}
