package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// delayProxy is an in-process TCP proxy that adds a round-trip time between the benchmark's
// connections and the server: every chunk of bytes read from one side is written to the other
// oneWay after it was read, in order. Reading goes on while earlier chunks wait, so the delay
// adds latency without limiting throughput to a chunk per delay, as a network link would.
type delayProxy struct {
	ln       net.Listener
	upstream func(ctx context.Context) (net.Conn, error)
	oneWay   time.Duration

	ctx    context.Context // cancelled by close
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// proxyChunk is the largest read the proxy forwards as one chunk.
const proxyChunk = 64 << 10

// proxyQueue is how many chunks one direction holds in flight before it stops reading.
const proxyQueue = 1024

// startDelayProxy listens on a loopback port and forwards every connection to a new connection
// dialed with upstream, delaying each direction by oneWay (RTT/2).
func startDelayProxy(upstream func(ctx context.Context) (net.Conn, error), oneWay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &delayProxy{ln: ln, upstream: upstream, oneWay: oneWay, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// addr is the address clients connect to.
func (p *delayProxy) addr() string { return p.ln.Addr().String() }

// close stops listening, closes every connection and waits for the proxy's goroutines.
func (p *delayProxy) close() error {
	err := p.ln.Close()
	p.cancel()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *delayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *delayProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *delayProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(client) })
	}
}

// serve forwards one client connection until both directions have ended.
func (p *delayProxy) serve(client net.Conn) {
	if !p.track(client) {
		_ = client.Close()
		return
	}
	defer p.untrack(client)
	server, err := p.upstream(p.ctx)
	if err != nil {
		return
	}
	if !p.track(server) {
		_ = server.Close()
		return
	}
	defer p.untrack(server)
	for _, c := range []net.Conn{client, server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(client, server) })
	wg.Go(func() { p.pipe(server, client) })
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk oneWay after it was read. At the end of src it half-closes
// dst, as the peer did; on an error it closes both, which ends the other direction too.
func (p *delayProxy) pipe(src, dst net.Conn) {
	queue := make(chan chunk, proxyQueue)
	readErr := make(chan error, 1)
	go func() {
		defer close(queue)
		buf := make([]byte, proxyChunk)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(p.oneWay)}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	if p.oneWay > 0 {
		lockPreciseThread() // this goroutine ends here, and its thread with it
	}
	failed := false
	for c := range queue {
		if failed {
			continue // drain, so that the reader ends
		}
		if p.oneWay > 0 {
			sleepUntil(c.due)
		}
		if _, err := dst.Write(c.b); err != nil {
			failed = true
			_ = src.Close()
			_ = dst.Close()
		}
	}
	if failed {
		return
	}
	if err := <-readErr; errors.Is(err, io.EOF) {
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
			return
		}
	}
	_ = src.Close()
	_ = dst.Close()
}
