package pgtemp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// ServerError is an error the server reported for a statement pgtemp ran itself (to set up
// replication or promote a standby).
type ServerError struct {
	Code    string // SQLSTATE, e.g. "55000"
	Message string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("pgtemp: server error %s: %s", e.Code, e.Message)
}

// queryTimeout bounds a statement pgtemp runs when the caller's context has no deadline.
const queryTimeout = 30 * time.Second

// query runs one SQL statement as the superuser on database postgres of the server behind the
// unix socket sock, over the simple query protocol, and returns its rows as text (NULL as "").
// Like probe, it speaks the protocol itself so that the package needs no client library; it
// relies on the "trust" authentication initdb was given.
func query(ctx context.Context, sock, sql string) ([][]string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, queryTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	// A cancelled context interrupts a read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	rows, err := runQuery(conn, sql)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return rows, err
}

func runQuery(conn net.Conn, sql string) ([][]string, error) {
	if _, err := conn.Write(startupMessage()); err != nil {
		return nil, err
	}
	if err := readUntilReady(conn, nil); err != nil {
		return nil, err
	}
	msg := []byte{'Q', 0, 0, 0, 0}
	msg = append(msg, sql...)
	msg = append(msg, 0)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
	if _, err := conn.Write(msg); err != nil {
		return nil, err
	}
	var rows [][]string
	if err := readUntilReady(conn, func(row []string) { rows = append(rows, row) }); err != nil {
		return nil, err
	}
	// Terminate, so the server does not log an unexpected EOF.
	_, _ = conn.Write([]byte{'X', 0, 0, 0, 4})
	return rows, nil
}

// readUntilReady reads messages up to and including ReadyForQuery, passing each data row to row.
// It returns the first error the server reported, if any, once the server is ready again. A nil
// row means the startup phase, in which an error ends the connection at once.
func readUntilReady(r io.Reader, row func([]string)) error {
	var serverErr error
	for {
		typ, body, err := readMessage(r)
		if err != nil {
			return err
		}
		switch typ {
		case 'R':
			// Authentication: only AuthenticationOk (0) is expected with trust.
			if len(body) < 4 || binary.BigEndian.Uint32(body) != 0 {
				return errors.New("pgtemp: the server asks for authentication; pgtemp clusters use trust")
			}
		case 'E':
			code, text := parseError(body)
			if serverErr == nil {
				serverErr = &ServerError{Code: code, Message: text}
			}
			if row == nil {
				return serverErr
			}
		case 'D':
			if row != nil {
				values, err := parseDataRow(body)
				if err != nil {
					return err
				}
				row(values)
			}
		case 'Z':
			return serverErr
		}
		// Anything else (parameter status, backend key, notices, row description, command
		// complete) carries nothing we need.
	}
}

// readMessage reads one backend message: its type and body.
func readMessage(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > 1<<24 {
		return 0, nil, fmt.Errorf("pgtemp: invalid message length %d", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// parseDataRow returns the columns of a DataRow message as text, NULL as "".
func parseDataRow(body []byte) ([]string, error) {
	if len(body) < 2 {
		return nil, errors.New("pgtemp: short data row")
	}
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	values := make([]string, n)
	for i := range values {
		if len(body) < 4 {
			return nil, errors.New("pgtemp: short data row")
		}
		size := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if size < 0 {
			continue // NULL
		}
		if int(size) > len(body) {
			return nil, errors.New("pgtemp: short data row")
		}
		values[i] = string(body[:size])
		body = body[size:]
	}
	return values, nil
}

// startupMessage is the protocol 3.0 StartupMessage for the superuser on database postgres.
func startupMessage() []byte {
	var msg []byte
	msg = binary.BigEndian.AppendUint32(msg, 0) // length, filled in below
	msg = binary.BigEndian.AppendUint32(msg, 3<<16)
	for _, s := range []string{"user", SuperUser, "database", "postgres", ""} {
		msg = append(msg, s...)
		msg = append(msg, 0)
	}
	binary.BigEndian.PutUint32(msg, uint32(len(msg)))
	return msg
}
