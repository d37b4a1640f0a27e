package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MaxPartitions bounds PartitionByFamily's partition count.
const MaxPartitions = 1024

// PartitionByFamily rebuilds oauth_family, oauth_refresh_tombstone and oauth_access_token as
// tables hash-partitioned by family id, with the given number of partitions each, keeping their
// rows, in one transaction. Every statement the package runs on a presented refresh token or
// access token names its family, so each touches one partition of each table (see
// docs/SCALING.md). The other tables stay as they are: codes and states are looked up by their own
// digest, oauth_refresh_token_legacy (tokens minted before schema version 5) by a digest that
// carries no family, and the revocation feed is read in one order across all families.
//
// It is the layout of a deployment, not a migration: run it once after Migrate on a database at
// the latest version; later migrations apply to the partitioned tables, but migrating down past
// schema 5 and up again rebuilds them unpartitioned (run it again then). It rewrites the tables
// under an exclusive lock: on a database in use, run it when a pause is acceptable.
func PartitionByFamily(ctx context.Context, pool *pgxpool.Pool, partitions int) error {
	if partitions < 2 || partitions > MaxPartitions {
		return fmt.Errorf("schema: partitions %d outside 2..%d", partitions, MaxPartitions)
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var partitioned bool
		err := tx.QueryRow(ctx, `SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('oauth_family')`).Scan(&partitioned)
		if errors.Is(err, pgx.ErrNoRows) {
			return errors.New("schema: no oauth_family table: run Migrate first")
		}
		if err != nil {
			return fmt.Errorf("schema: %w", err)
		}
		if partitioned {
			return errors.New("schema: oauth_family is partitioned already")
		}
		// The view of every token names the two tables: it is made again, as the migrations
		// defined it, over their partitioned replacements.
		var view string
		if err := tx.QueryRow(ctx, `SELECT pg_get_viewdef('oauth_refresh_token'::regclass)`).Scan(&view); err != nil {
			return fmt.Errorf("schema: read the view oauth_refresh_token: %w", err)
		}
		// Every column of the family but a generated one (sweep_day up to schema 6), which the copy
		// computes again.
		var columns string
		if err := tx.QueryRow(ctx, `SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
			FROM pg_attribute WHERE attrelid = 'oauth_family'::regclass AND attnum > 0 AND NOT attisdropped
			AND attgenerated = ''`).Scan(&columns); err != nil {
			return fmt.Errorf("schema: read the columns of oauth_family: %w", err)
		}
		// A database at schema 5 has no access tokens; migration 6 partitions them as the families
		// are when it adds them.
		var accessTokens bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('oauth_access_token') IS NOT NULL`).Scan(&accessTokens); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
		// The row triggers of the two tables (schema 7's oauth_family_check and
		// oauth_family_sweep_day), made again on their replacements once the rows are copied (which
		// keeps the copied sweep_day), enabled as they were.
		var triggers string
		if err := tx.QueryRow(ctx, `SELECT coalesce(string_agg(pg_get_triggerdef(t.oid) || ';' ||
				CASE t.tgenabled
					WHEN 'A' THEN format(' ALTER TABLE %s ENABLE ALWAYS TRIGGER %I;', t.tgrelid::regclass, t.tgname)
					WHEN 'R' THEN format(' ALTER TABLE %s ENABLE REPLICA TRIGGER %I;', t.tgrelid::regclass, t.tgname)
					WHEN 'D' THEN format(' ALTER TABLE %s DISABLE TRIGGER %I;', t.tgrelid::regclass, t.tgname)
					ELSE '' END, E'\n' ORDER BY t.tgname), '')
			FROM pg_trigger t
			WHERE t.tgrelid IN ('oauth_family'::regclass, 'oauth_refresh_tombstone'::regclass) AND NOT t.tgisinternal`).Scan(&triggers); err != nil {
			return fmt.Errorf("schema: read the triggers of oauth_family: %w", err)
		}
		if _, err := tx.Exec(ctx, partitionSQL(partitions, columns, accessTokens)+triggers+"\nCREATE VIEW oauth_refresh_token AS "+view); err != nil {
			return fmt.Errorf("schema: partition by family: %w", err)
		}
		return nil
	})
}

// partitionSQL is the DDL PartitionByFamily runs: the three tables renamed aside, their partitioned
// replacements created with the same columns, constraints and indexes, the rows copied, the
// foreign keys that name them made again, the old tables dropped. The view that names them is
// dropped first; the caller makes it again.
func partitionSQL(n int, familyColumns string, accessTokens bool) string {
	var b strings.Builder
	b.WriteString(`SET LOCAL lock_timeout = '5s';
DROP VIEW oauth_refresh_token;
ALTER TABLE oauth_authorization_code DROP CONSTRAINT oauth_authorization_code_family_id_fkey;
ALTER TABLE oauth_refresh_token_legacy DROP CONSTRAINT oauth_refresh_token_legacy_family_id_fkey;

ALTER TABLE oauth_family RENAME TO oauth_family_unpartitioned;
ALTER INDEX oauth_family_pkey RENAME TO oauth_family_unpartitioned_pkey;
ALTER INDEX oauth_family_sweep_day_idx RENAME TO oauth_family_unpartitioned_sweep_day_idx;
ALTER INDEX oauth_family_user_id_client_id_idx RENAME TO oauth_family_unpartitioned_user_id_client_id_idx;
ALTER INDEX oauth_family_client_id_idx RENAME TO oauth_family_unpartitioned_client_id_idx;
CREATE TABLE oauth_family (LIKE oauth_family_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)
    PARTITION BY HASH (id);
ALTER TABLE oauth_family ADD CONSTRAINT oauth_family_pkey PRIMARY KEY (id);
CREATE INDEX oauth_family_sweep_day_idx ON oauth_family (sweep_day);
CREATE INDEX oauth_family_user_id_client_id_idx ON oauth_family (user_id, client_id);
CREATE INDEX oauth_family_client_id_idx ON oauth_family (client_id);

ALTER TABLE oauth_refresh_tombstone RENAME TO oauth_refresh_tombstone_unpartitioned;
ALTER INDEX oauth_refresh_tombstone_pkey RENAME TO oauth_refresh_tombstone_unpartitioned_pkey;
ALTER INDEX oauth_refresh_tombstone_sealed_idx RENAME TO oauth_refresh_tombstone_unpartitioned_sealed_idx;
CREATE TABLE oauth_refresh_tombstone (LIKE oauth_refresh_tombstone_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (family_id);
ALTER TABLE oauth_refresh_tombstone ADD CONSTRAINT oauth_refresh_tombstone_pkey PRIMARY KEY (family_id, digest);
CREATE INDEX oauth_refresh_tombstone_sealed_idx ON oauth_refresh_tombstone (consumed_at)
    WHERE successor_sealed IS NOT NULL;

`)
	if accessTokens {
		b.WriteString(`
ALTER TABLE oauth_access_token RENAME TO oauth_access_token_unpartitioned;
ALTER INDEX oauth_access_token_pkey RENAME TO oauth_access_token_unpartitioned_pkey;
ALTER INDEX oauth_access_token_expires_at_idx RENAME TO oauth_access_token_unpartitioned_expires_at_idx;
ALTER INDEX oauth_access_token_standalone_idx RENAME TO oauth_access_token_unpartitioned_standalone_idx;
ALTER INDEX oauth_access_token_standalone_subject_idx RENAME TO oauth_access_token_unpartitioned_standalone_subject_idx;
CREATE TABLE oauth_access_token (LIKE oauth_access_token_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY HASH (family_id);
ALTER TABLE oauth_access_token ADD CONSTRAINT oauth_access_token_pkey PRIMARY KEY (family_id, key);
CREATE INDEX oauth_access_token_expires_at_idx ON oauth_access_token (expires_at);
CREATE INDEX oauth_access_token_standalone_idx ON oauth_access_token (client_id, subject) WHERE standalone;
CREATE INDEX oauth_access_token_standalone_subject_idx ON oauth_access_token (subject) WHERE standalone;
`)
	}
	for i := range n {
		fmt.Fprintf(&b, "CREATE TABLE oauth_family_p%d PARTITION OF oauth_family FOR VALUES WITH (MODULUS %d, REMAINDER %d) WITH (fillfactor = 80);\n", i, n, i)
		fmt.Fprintf(&b, "CREATE TABLE oauth_refresh_tombstone_p%d PARTITION OF oauth_refresh_tombstone FOR VALUES WITH (MODULUS %d, REMAINDER %d);\n", i, n, i)
		if accessTokens {
			fmt.Fprintf(&b, "CREATE TABLE oauth_access_token_p%d PARTITION OF oauth_access_token FOR VALUES WITH (MODULUS %d, REMAINDER %d);\n", i, n, i)
		}
	}
	b.WriteString(`
INSERT INTO oauth_family (` + familyColumns + `)
SELECT ` + familyColumns + `
FROM oauth_family_unpartitioned;
INSERT INTO oauth_refresh_tombstone SELECT * FROM oauth_refresh_tombstone_unpartitioned;
DROP TABLE oauth_refresh_tombstone_unpartitioned;
DROP TABLE oauth_family_unpartitioned;
`)
	if accessTokens {
		b.WriteString(`INSERT INTO oauth_access_token SELECT * FROM oauth_access_token_unpartitioned;
DROP TABLE oauth_access_token_unpartitioned;
`)
	}
	b.WriteString(`
ALTER TABLE oauth_refresh_token_legacy ADD CONSTRAINT oauth_refresh_token_legacy_family_id_fkey
    FOREIGN KEY (family_id) REFERENCES oauth_family (id) ON DELETE CASCADE;
ALTER TABLE oauth_authorization_code ADD CONSTRAINT oauth_authorization_code_family_id_fkey
    FOREIGN KEY (family_id) REFERENCES oauth_family (id) ON DELETE CASCADE;
`)
	return b.String()
}
