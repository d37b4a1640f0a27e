// Package latency summarises measured latencies, the same way wherever the project reports them:
// the rotation benchmark (oauthstore bench), the janitor benchmark and the soak.
package latency

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the nearest-rank q-quantile of sorted durations: the smallest of them that
// at least a fraction q of them are at or below (q = 0.99: the 990th of 1,000). Zero for none.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// Summary is what the reports print of a set of latencies.
type Summary struct {
	N                   int
	P50, P99, P999, Max time.Duration
}

// Summarize sorts a copy of d and summarises it.
func Summarize(d []time.Duration) Summary {
	s := slices.Clone(d)
	slices.Sort(s)
	out := Summary{N: len(s), P50: Percentile(s, 0.50), P99: Percentile(s, 0.99), P999: Percentile(s, 0.999)}
	if len(s) > 0 {
		out.Max = s[len(s)-1]
	}
	return out
}
