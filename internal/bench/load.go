package bench

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	loadBatch   = 50_000 // rows per COPY, per table
	loadWorkers = 2      // concurrent COPY connections
	pepperID    = "default"
	tokenTTL    = 30 * 24 * time.Hour
	familyLife  = 90 * 24 * time.Hour
)

var benchScope = []string{"offline_access", "openid"}

// packageTables are the package's own tables, where variants a, b and c rotate. The load fills the
// columns a family cannot do without; its first token is part of its row, so a family starts
// with no row in the token table (oauth_refresh_tombstone), which its rotations fill.
var packageTables = tableSet{
	schema: SchemaName,
	family: "oauth_family",
	token:  "oauth_refresh_tombstone",
	familyColumns: []string{"id", "client_id", "user_id", "scope", "created_at", "expires_at", "idle_expires_at",
		"token_digest", "token_pepper_id", "token_scope"},
	familyValues: func(r *familyRow) []any {
		return []any{pgtype.UUID{Bytes: r.id, Valid: true}, r.client, r.user, benchScope,
			r.created, r.created.Add(familyLife), r.created.Add(tokenTTL), r.digest, pepperID, benchScope}
	},
}

// LoadStat reports one bulk load.
type LoadStat struct {
	Tables         string  `json:"tables"`
	FromRows       int     `json:"from_rows"`
	ToRows         int     `json:"to_rows"`
	CopySeconds    float64 `json:"copy_seconds"`
	AnalyzeSeconds float64 `json:"vacuum_analyze_checkpoint_seconds"`
	RowsPerSecond  float64 `json:"families_per_second"`
	TableBytes     int64   `json:"table_bytes"`
	IndexBytes     int64   `json:"index_bytes"`
}

// familyRow is one family with its one live token.
type familyRow struct {
	id      [16]byte
	digest  []byte
	client  string
	user    string
	created time.Time
}

// preload adds live families (one unconsumed token each) to the tables of set until they hold want
// of them besides the benchmark's own, with COPY in batches on loadWorkers connections, then runs
// VACUUM (ANALYZE) so that the planner and the visibility map know the new size, and a CHECKPOINT.
func (e *env) preload(ctx context.Context, set tableSet, have, want int) (LoadStat, error) {
	st := LoadStat{Tables: set.String(), FromRows: have, ToRows: want}
	fmt.Fprintf(e.opts.Progress, "loading families %d..%d into %s with COPY (%d per batch, %d connections)…\n",
		have, want, set, loadBatch, loadWorkers)
	began := time.Now()
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	base := time.Now()

	var (
		mu         sync.Mutex
		firstErr   error
		wg         sync.WaitGroup
		done       = have
		nextReport = have + (want-have)/10
		next       = have // start of the next batch to load
	)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := e.writer(ctx, loadWorkers)
	if err != nil {
		return st, err
	}
	// take hands out the next batch, or false when all are taken or a loader failed.
	take := func() (int, int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if next >= want || firstErr != nil {
			return 0, 0, false
		}
		start := next
		next += loadBatch
		return start, min(loadBatch, want-start), true
	}
	for range loadWorkers {
		wg.Go(func() {
			for {
				start, n, ok := take()
				if !ok {
					return
				}
				rng := rand.New(rand.NewChaCha8(batchSeed(seed, start)))
				rows := make([]familyRow, n)
				for i := range rows {
					r := &rows[i]
					fillUUID(rng, &r.id)
					r.digest = make([]byte, 32)
					fillBytes(rng, r.digest)
					k := start + i
					r.client = fmt.Sprintf("client-%03d", k%100)
					r.user = fmt.Sprintf("user-%d", k/3)
					r.created = base.Add(-time.Duration(rng.Int64N(int64(10 * 24 * time.Hour))))
				}
				err := copyFamilies(lctx, w.pool, set, rows)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					return
				}
				done += n
				if done >= nextReport && done < want {
					fmt.Fprintf(e.opts.Progress, "  %d families, %.0f/s\n", done, float64(done-have)/time.Since(began).Seconds())
					nextReport += (want - have) / 10
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(firstErr, w.close(ctx)); err != nil {
		return st, fmt.Errorf("load: %w", err)
	}
	st.CopySeconds = time.Since(began).Seconds()
	if st.CopySeconds > 0 {
		st.RowsPerSecond = float64(want-have) / st.CopySeconds
	}
	fmt.Fprintf(e.opts.Progress, "  loaded in %.1fs; VACUUM (ANALYZE), CHECKPOINT…\n", st.CopySeconds)
	began = time.Now()
	if _, err := e.admin.Exec(ctx, "VACUUM (ANALYZE) "+strings.Join(set.tables(), ", ")); err != nil {
		return st, fmt.Errorf("vacuum analyze: %w", err)
	}
	// The measurement starts from clean buffers rather than under the checkpoint the load left due.
	// CHECKPOINT needs pg_checkpoint or a superuser; without either the load's checkpoint runs on.
	_, _ = e.admin.Exec(ctx, "CHECKPOINT")
	st.AnalyzeSeconds = time.Since(began).Seconds()
	err = e.admin.QueryRow(ctx, `SELECT
		sum(pg_table_size(c.oid))::bigint, sum(pg_indexes_size(c.oid))::bigint
		FROM pg_class c WHERE c.oid IN (SELECT to_regclass(n) FROM unnest($1::text[]) n)`, set.tables()).
		Scan(&st.TableBytes, &st.IndexBytes)
	fmt.Fprintf(e.opts.Progress, "  vacuum analyze + checkpoint %.1fs; tables %d MB, indexes %d MB\n",
		st.AnalyzeSeconds, st.TableBytes>>20, st.IndexBytes>>20)
	return st, err
}

// copyFamilies writes families and then their tokens into set (the foreign key wants that order),
// each table with one COPY on one connection of pool.
func copyFamilies(ctx context.Context, pool *pgxpool.Pool, set tableSet, rows []familyRow) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	copyRows := func(table string, columns []string, values func(*familyRow) []any) error {
		i := 0
		_, err := conn.CopyFrom(ctx, pgx.Identifier{set.schema, table}, columns, pgx.CopyFromFunc(func() ([]any, error) {
			if i == len(rows) {
				return nil, nil
			}
			i++
			return values(&rows[i-1]), nil
		}))
		if err != nil {
			return fmt.Errorf("copy %s: %w", table, err)
		}
		return nil
	}
	if set.family != "" {
		if err := copyRows(set.family, set.familyColumns, set.familyValues); err != nil {
			return err
		}
	}
	if set.tokenColumns == nil {
		return nil // the family row holds its first token
	}
	return copyRows(set.token, set.tokenColumns, set.tokenValues)
}

func batchSeed(seed [32]byte, start int) [32]byte {
	binary.LittleEndian.PutUint64(seed[:8], binary.LittleEndian.Uint64(seed[:8])^uint64(start))
	return seed
}

func fillBytes(rng *rand.Rand, b []byte) {
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(b[i:], w[:])
	}
}

func fillUUID(rng *rand.Rand, u *[16]byte) {
	fillBytes(rng, u[:])
	markUUIDv4(u)
}

// markUUIDv4 sets the version and variant bits of random bytes: a UUID version 4 (RFC 4122).
func markUUIDv4(u *[16]byte) {
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
}

// sealedBytes is the size of the sealed copy of a successor that Store.Rotate keeps with it under
// the default grace window: AES-256-GCM's 12-byte nonce, the 32-byte raw token and the 16-byte tag.
const sealedBytes = 12 + 32 + 16

// randomSealed stands for a sealed successor in the rotations with precomputed digests, so that
// they store the same bytes per row as Store.Rotate does.
func randomSealed() []byte {
	b := make([]byte, sealedBytes)
	_, _ = crand.Read(b)
	return b
}

// randomDigest returns 32 bytes from crypto/rand: the digests the rotations of b and c present
// and insert are as random as HMAC outputs, so their index inserts land as a's do.
func randomDigest() []byte {
	b := make([]byte, 32)
	_, _ = crand.Read(b)
	return b
}
