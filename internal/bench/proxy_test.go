package bench

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// upstream starts a TCP server that runs handle on every connection, and returns a dial function
// for it as the proxy takes one.
func upstream(t *testing.T, handle func(net.Conn)) func(context.Context) (net.Conn, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}
}

func proxyFor(t *testing.T, dial func(context.Context) (net.Conn, error), oneWay time.Duration) net.Conn {
	t.Helper()
	p, err := startDelayProxy(dial, oneWay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.close() })
	c, err := net.Dial("tcp", p.addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestDelayProxy_DelaysEachDirection times a message to the server and the answer back
// separately: each takes at least the one-way delay.
func TestDelayProxy_DelaysEachDirection(t *testing.T) {
	const oneWay = 30 * time.Millisecond
	arrived := make(chan time.Time, 1)
	dial := upstream(t, func(c net.Conn) {
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		arrived <- time.Now()
		_, _ = c.Write([]byte("pong"))
	})
	c := proxyFor(t, dial, oneWay)
	sent := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	at := <-arrived
	if string(buf) != "pong" {
		t.Errorf("got %q back", buf)
	}
	if d := at.Sub(sent); d < oneWay {
		t.Errorf("client → server took %s, want ≥ %s", d, oneWay)
	}
	if d := back.Sub(at); d < oneWay {
		t.Errorf("server → client took %s, want ≥ %s", d, oneWay)
	}
	if d := back.Sub(sent); d > 2*oneWay+time.Second {
		t.Errorf("round trip took %s for %s each way", d, oneWay)
	}
}

// TestDelayProxy_SubMillisecond measures round trips at the smallest delay the benchmark uses:
// each is at least the RTT, and their median not far above it. The median is taken over up to
// three series, as another process may hold both cores for the whole of one.
func TestDelayProxy_SubMillisecond(t *testing.T) {
	const oneWay = 100 * time.Microsecond
	dial := upstream(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	c := proxyFor(t, dial, oneWay)
	buf := make([]byte, 1)
	var medians []time.Duration
	for series := 0; series < 3; series++ {
		var rtts []time.Duration
		for range 50 {
			t0 := time.Now()
			if _, err := c.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			rtts = append(rtts, time.Since(t0))
		}
		slices.Sort(rtts)
		if rtts[0] < 2*oneWay {
			t.Fatalf("fastest round trip %s, want ≥ %s", rtts[0], 2*oneWay)
		}
		med := rtts[len(rtts)/2]
		medians = append(medians, med)
		t.Logf("RTT %s: min %s, median %s, max %s", 2*oneWay, rtts[0], med, rtts[len(rtts)-1])
		// Loose: the machine may be busy; without nanosleep the median is over 2 ms.
		if med <= 2*oneWay+5*time.Millisecond {
			return
		}
	}
	t.Errorf("median round trips %v for an RTT of %s", medians, 2*oneWay)
}

// TestDelayProxy_BytesIntactBothWays streams random bytes through an echo server while reading
// them back, and half-closes: everything comes back in order, then the end of the stream.
func TestDelayProxy_BytesIntactBothWays(t *testing.T) {
	dial := upstream(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	c := proxyFor(t, dial, time.Millisecond)
	data := make([]byte, 4<<20)
	_, _ = crand.Read(data)
	errc := make(chan error, 1)
	go func() {
		// Writes of uneven sizes, so that chunks do not line up with the reads.
		rest := data
		for n := 1; len(rest) > 0; n = n*7%65521 + 1 {
			k := min(n, len(rest))
			if _, err := c.Write(rest[:k]); err != nil {
				errc <- err
				return
			}
			rest = rest[k:]
		}
		errc <- c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("got %d bytes back, want the %d sent, in order", len(got), len(data))
	}
}

// TestDelayProxy_DelayDoesNotSerialize sends messages faster than the delay: they arrive a delay
// after each was sent, not one delay after another.
func TestDelayProxy_DelayDoesNotSerialize(t *testing.T) {
	const (
		oneWay   = 50 * time.Millisecond
		messages = 10
		gap      = 5 * time.Millisecond
	)
	done := make(chan time.Time, 1)
	dial := upstream(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, messages)); err == nil {
			done <- time.Now()
		}
	})
	c := proxyFor(t, dial, oneWay)
	start := time.Now()
	for range messages {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}
	// Serialized, the last byte would arrive after messages × oneWay (500 ms).
	if d := (<-done).Sub(start); d < oneWay || d > (messages-1)*gap+oneWay+200*time.Millisecond {
		t.Errorf("%d messages %s apart arrived after %s with %s one way", messages, gap, d, oneWay)
	}
}
