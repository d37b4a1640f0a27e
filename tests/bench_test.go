package tests

import (
	"testing"

	"github.com/oauthstore/oauthstore/repository"
)

// go test -run '^$' -bench . -benchmem ./  (from tests/): one worker, real PostgreSQL.

func BenchmarkIssue(b *testing.B) {
	d := setupBench(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRotate(b *testing.B) {
	d := setupBench(b)
	tok, err := d.store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
	if err != nil {
		b.Fatal(err)
	}
	current := tok.Token.Reveal()
	b.ReportAllocs()
	for b.Loop() {
		next, err := d.store.Rotate(d.ctx, repository.RotateRequest{Token: current, ClientID: "c"})
		if err != nil {
			b.Fatal(err)
		}
		current = next.Token.Reveal()
	}
}
