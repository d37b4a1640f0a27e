package latency

import (
	"testing"
	"time"
)

func TestPercentile_NearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 1000; i++ {
		d = append(d, time.Duration(i))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}, {0, 1}} {
		if got := Percentile(d, c.q); got != c.want {
			t.Errorf("Percentile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v", got)
	}
	if got := Percentile([]time.Duration{7}, 0.999); got != 7 {
		t.Errorf("percentile of one = %v", got)
	}
}

func TestSummarize_SortsACopy(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3}
	s := Summarize(d)
	if s.N != 5 || s.P50 != 3 || s.P99 != 5 || s.Max != 5 || d[0] != 5 {
		t.Fatalf("Summarize(%v) = %+v", d, s)
	}
}
