package pgtemp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// probe reports whether the server behind the unix socket sock accepts
// connections. It performs a protocol-level startup handshake, like
// pg_isready, rather than only checking for the socket file: the socket
// appears before the server has finished recovery, and connections made
// then are refused with "the database system is starting up".
//
// Speaking the protocol directly keeps the package free of client
// libraries and avoids spawning pg_isready many times a second.
func probe(ctx context.Context, sock string) (bool, error) {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return false, err
	}

	if _, err := conn.Write(startupMessage()); err != nil {
		return false, err
	}

	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return false, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > 1<<16 {
		return false, fmt.Errorf("invalid startup response length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return false, err
	}

	switch hdr[0] {
	case 'R': // an authentication request: the server is accepting connections
		// Terminate, so the server does not log an unexpected EOF.
		_, _ = conn.Write([]byte{'X', 0, 0, 0, 4})
		return true, nil
	case 'E':
		code, text := parseError(body)
		// 57P03 cannot_connect_now: starting up, shutting down or in recovery.
		if code == "57P03" {
			return false, errors.New(text)
		}
		// Any other error (say, too many connections) still comes from a
		// running server, which is what pg_isready reports as well.
		return true, nil
	default:
		return false, fmt.Errorf("unexpected startup response %q", hdr[0])
	}
}

// parseError returns the SQLSTATE and message of an ErrorResponse body.
func parseError(body []byte) (code, message string) {
	for len(body) > 0 && body[0] != 0 {
		field := body[0]
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			break
		}
		value := string(body[1 : 1+end])
		body = body[end+2:]
		switch field {
		case 'C':
			code = value
		case 'M':
			message = value
		}
	}
	return code, message
}
