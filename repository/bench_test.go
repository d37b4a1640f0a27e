package repository

import "testing"

func BenchmarkMint(b *testing.B) {
	d := newDigester(ring(testPepper()), "refresh-token", false)
	b.ReportAllocs()
	for b.Loop() {
		d.mint()
	}
}

func BenchmarkDigestPresented(b *testing.B) {
	for _, peppers := range []int{1, 2} {
		r := ring(testPepper())
		if peppers == 2 {
			r = append(r, Pepper{ID: "old", Secret: NewKey(append(testPepper(), 1))})
		}
		d := newDigester(r, "refresh-token", false)
		tok, _, _ := d.mint()
		b.Run(map[int]string{1: "one-pepper", 2: "two-peppers"}[peppers], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				d.digestPresented(tok.Reveal())
			}
		})
	}
}
