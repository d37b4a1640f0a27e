package repository

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/oauthstore/oauthstore/db"
)

// DBTX is what a Store runs its statements on: a *pgxpool.Pool, a *pgx.Conn, or a pgx.Tx that
// the caller commits. The happy paths are single statements; the rare paths that need several
// (a refused rotation, a grace reuse) run them in a READ COMMITTED transaction of their own, which
// inside the caller's transaction is a savepoint.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// checkedTx is a caller's transaction, checked to be READ COMMITTED before its first statement.
type checkedTx struct {
	DBTX
	q       *db.Queries
	mu      sync.Mutex
	checked bool
	err     error // ErrNotReadCommitted, once found
}

func (c *checkedTx) check(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checked {
		return c.err
	}
	level, err := c.q.PgTransactionIsolation(ctx, c.DBTX)
	if err != nil {
		return fmt.Errorf("read the transaction's isolation level: %w", err)
	}
	c.checked = true
	if level != "read committed" {
		c.err = fmt.Errorf("%w (it is %s)", ErrNotReadCommitted, level)
	}
	return c.err
}

func (c *checkedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := c.check(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return c.DBTX.Exec(ctx, sql, args...)
}

func (c *checkedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.check(ctx); err != nil {
		return nil, err
	}
	return c.DBTX.Query(ctx, sql, args...)
}

func (c *checkedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := c.check(ctx); err != nil {
		return errRow{err}
	}
	return c.DBTX.QueryRow(ctx, sql, args...)
}

func (c *checkedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := c.check(ctx); err != nil {
		return nil, err
	}
	return c.DBTX.Begin(ctx)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// inTx runs fn in a READ COMMITTED transaction of its own (a savepoint inside the caller's) and
// commits it when fn asks to, whatever else fn returns: a replay's revocation must commit although
// the call fails.
func (a *Admin) inTx(ctx context.Context, op string, fn func(tx pgx.Tx) (commit bool, err error)) error {
	tx, err := a.begin(ctx)
	if err != nil {
		return dbError(op, err)
	}
	commit, err := fn(tx)
	if !commit {
		if rbErr := tx.Rollback(ctx); rbErr != nil && err == nil {
			return dbError(op, rbErr)
		}
		return err
	}
	if cErr := tx.Commit(ctx); cErr != nil {
		return dbError(op, cErr)
	}
	return err
}

// begin opens a transaction pinned to READ COMMITTED whatever the database's or role's default
// (default_transaction_isolation), or a savepoint inside the caller's transaction.
func (a *Admin) begin(ctx context.Context) (pgx.Tx, error) {
	type txBeginner interface {
		BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
	}
	if a.callerTx {
		return a.dbtx.Begin(ctx)
	}
	if b, ok := a.dbtx.(txBeginner); ok {
		return b.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	}
	tx, err := a.dbtx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if err := a.q.PgSetReadCommitted(ctx, tx); err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// readCommitted runs one statement. Alone it runs in an implicit transaction at the database's
// default isolation level; should that be stricter and the statement meet a concurrent change
// (a serialization failure), it runs again in a READ COMMITTED transaction, where it waits for
// the change and sees its outcome.
func (a *Admin) readCommitted(ctx context.Context, op string, fn func(DBTX) error) error {
	err := fn(a.dbtx)
	if !isSerializationFailure(err) || a.callerTx {
		return err
	}
	return a.inTx(ctx, op, func(tx pgx.Tx) (bool, error) {
		err := fn(tx)
		return err == nil, err
	})
}

func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.SerializationFailure
}
