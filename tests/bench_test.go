package tests

import (
	"log/slog"
	"testing"
	"time"

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

// BenchmarkRotate rotates one family's token, with the default grace window (the successor is
// sealed for its parent's holder and stored with it) and with strict rotation (nothing sealed):
// the difference is the cost of the sealed copy.
func BenchmarkRotate(b *testing.B) {
	d := setupBench(b)
	strict, err := repository.New(d.pool, repository.Config{Pepper: repository.NewKey(d.pepper), GraceWindow: repository.StrictRotation,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	for name, store := range map[string]*repository.Store{"default_grace": d.store, "strict": strict} {
		b.Run(name, func(b *testing.B) {
			tok, err := store.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
			if err != nil {
				b.Fatal(err)
			}
			current := tok.Token.Reveal()
			b.ReportAllocs()
			for b.Loop() {
				next, err := store.Rotate(d.ctx, repository.RotateRequest{Token: current, ClientID: "c"})
				if err != nil {
					b.Fatal(err)
				}
				current = next.Token.Reveal()
			}
		})
	}
}

// BenchmarkRotateGraceCost alternates, rotation by rotation, a store with the default grace window
// (sealing each successor) and a strict one on the same cluster, and reports each one's mean
// time: the ratio is the cost of the sealed copy, measured under the same conditions.
func BenchmarkRotateGraceCost(b *testing.B) {
	d := setupBench(b)
	strict, err := repository.New(d.pool, repository.Config{Pepper: repository.NewKey(d.pepper), GraceWindow: repository.StrictRotation,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	stores := []*repository.Store{d.store, strict}
	current := make([]string, 2)
	for i, s := range stores {
		tok, err := s.Issue(d.ctx, repository.IssueRequest{ClientID: "c", UserID: "u", Scope: []string{"openid"}})
		if err != nil {
			b.Fatal(err)
		}
		current[i] = tok.Token.Reveal()
	}
	var spent [2]time.Duration
	n := 0
	for b.Loop() {
		for i, s := range stores {
			start := time.Now()
			next, err := s.Rotate(d.ctx, repository.RotateRequest{Token: current[i], ClientID: "c"})
			spent[i] += time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			current[i] = next.Token.Reveal()
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "ns/grace-rotation")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(n), "ns/strict-rotation")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "grace/strict")
}
