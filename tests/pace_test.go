package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The fault, race and cancellation tests must not depend on how fast the server they run against
// is: a connection through Docker's port mapping can take 30 ms where a unix socket takes 1 ms, and
// an injector tuned for one either misses every operation or hits every one on the other. So a
// test measures the latencies of the server it has, times its faults from them, adapts them to
// what it sees, and runs until it has both outcomes in volume — then asserts that it did.

// median runs fn n times and returns the median duration of the calls.
func median(t *testing.T, n int, fn func() error) time.Duration {
	t.Helper()
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		if err := fn(); err != nil {
			t.Fatalf("measuring latency: %v", err)
		}
		d[i] = time.Since(start)
	}
	slices.Sort(d)
	return d[n/2]
}

// connectLatency is the median time to open a connection to url and run one statement on it.
func connectLatency(t *testing.T, ctx context.Context, url string) time.Duration {
	t.Helper()
	return median(t, 5, func() error {
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		_, err = c.Exec(ctx, "SELECT 1")
		return err
	})
}

// faultDelay times a fault against an operation in flight. It draws a delay uniformly from
// [0, 2m); after each trial the caller reports whether the fault hit (the operation failed) or came
// too late (it succeeded), and m moves towards the point where both happen equally often. Its
// start is the operation's measured latency, so it is right from the first trial on a fast or a
// slow server alike.
type faultDelay struct {
	mean atomic.Int64 // nanoseconds
}

func newFaultDelay(start time.Duration) *faultDelay {
	d := &faultDelay{}
	d.mean.Store(int64(max(start, 50*time.Microsecond)))
	return d
}

func (d *faultDelay) next() time.Duration {
	return time.Duration(rand.Int64N(2*d.mean.Load() + 1))
}

// observe adjusts the mean after a trial: longer after a fault that hit, shorter after one that
// came too late. The bounds keep it between 50 µs and one second.
func (d *faultDelay) observe(hit bool) {
	for {
		old := d.mean.Load()
		next := old * 21 / 20
		if !hit {
			next = old * 19 / 20
		}
		next = min(max(next, int64(50*time.Microsecond)), int64(time.Second))
		if d.mean.CompareAndSwap(old, next) {
			return
		}
	}
}

func (d *faultDelay) String() string {
	return time.Duration(d.mean.Load()).Round(time.Microsecond).String()
}

// quota is a set of named minimum counts a test's workload must reach: acknowledged operations and
// operations its faults hit, so that it never passes having exercised nothing.
type quota []struct {
	name string
	got  func() int64
	min  int64
}

func (q *quota) need(name string, min int64, got func() int64) {
	*q = append(*q, struct {
		name string
		got  func() int64
		min  int64
	}{name, got, min})
}

// met reports whether every count has reached its minimum.
func (q quota) met() bool {
	for _, c := range q {
		if c.got() < c.min {
			return false
		}
	}
	return true
}

// check fails the test with every count that fell short.
func (q quota) check(t *testing.T, what string) {
	t.Helper()
	var short []string
	for _, c := range q {
		if n := c.got(); n < c.min {
			short = append(short, fmt.Sprintf("%s %d (want at least %d)", c.name, n, c.min))
		}
	}
	if len(short) > 0 {
		t.Fatalf("%s: the workload fell short, so the test proves nothing: %s", what, strings.Join(short, ", "))
	}
}

// runUntil calls stop once q is met and at least minRun has passed, or when maxRun has passed,
// whichever comes first, or when ctx ends.
func (q quota) runUntil(ctx context.Context, minRun, maxRun time.Duration, stop func()) {
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			stop()
			return
		case <-tick.C:
			if elapsed := time.Since(start); elapsed >= maxRun || elapsed >= minRun && q.met() {
				stop()
				return
			}
		}
	}
}
