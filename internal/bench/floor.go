package bench

import (
	"context"

	"github.com/jackc/pgx/v5/pgtype"
)

// Variant d, the floor: the cheapest single statement that consumes one row and inserts one, on a
// table whose rows are as wide as the package's token rows but that has nothing besides its
// primary key: no family row to lock and bump, no secondary or partial index, no check, no
// foreign key, no tombstone. What a rotation costs above it is the price of the package's rules.

// floorTable is the floor's one table, in the benchmark's schema.
const floorTable = "floor_token"

const floorDDL = `CREATE TABLE ` + floorTable + ` (
    digest        bytea       PRIMARY KEY,
    pepper_id     text        NOT NULL,
    family_id     uuid        NOT NULL,
    parent_digest bytea,
    scope         text[]      NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
)`

// floorRotate deletes the presented row and inserts its successor in the same family, in one
// statement; it inserts nothing when the digest is unknown.
const floorRotate = `WITH consumed AS (
    DELETE FROM ` + floorTable + ` WHERE digest = $1
    RETURNING family_id, pepper_id, scope
)
INSERT INTO ` + floorTable + ` (digest, pepper_id, family_id, parent_digest, scope, created_at, expires_at)
SELECT $2, pepper_id, family_id, $1, scope, now(), now() + $3::interval
FROM consumed`

// floorTables is where variant d rotates; it is loaded and seeded with as many rows as the
// package's token table, of the same values.
var floorTables = tableSet{
	schema:       SchemaName,
	token:        floorTable,
	tokenColumns: []string{"digest", "pepper_id", "family_id", "scope", "created_at", "expires_at"},
	tokenValues: func(r *familyRow) []any {
		return []any{r.digest, pepperID, pgtype.UUID{Bytes: r.id, Valid: true}, benchScope,
			r.created, r.created.Add(tokenTTL)}
	},
}

func (e *env) createFloor(ctx context.Context) error {
	_, err := e.admin.Exec(ctx, floorDDL)
	return err
}
