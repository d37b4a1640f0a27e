// Package repository keeps the credentials of an OAuth 2 / OpenID Connect authorization server in
// PostgreSQL: refresh-token families with rotation and replay detection, authorization codes
// with PKCE, and the state of authorization requests. It is the API a server calls; the SQL lives
// in the generated package db, and the rules the database can hold live in the schema.
//
// Two types:
//
//   - Store (New) mints and checks credentials. It keeps only keyed digests of them (HMAC-SHA-256
//     under a pepper ring that stays outside the database), rotates a refresh token in one
//     statement, and revokes a whole family when a consumed token or code is presented again
//     (RFC 6819 §5.2.2.3, RFC 6749 §4.1.2).
//   - Admin (NewAdmin) needs no pepper: it lists, revokes and deletes families, cleans up what is
//     dead, and reports statistics and what depends on each pepper. A Store is an Admin too.
//
// Both run on a *pgxpool.Pool, a *pgx.Conn or a caller's transaction (WithDB). A hot standby given
// as Config.ReadReplica serves the reads that tolerate lag (a user's session list, statistics) as
// long as it shows that it is within Config.MaxReplicaStaleness of the primary; whatever decides a
// credential's fate runs on the primary. Every refused credential is an error that matches
// ErrInvalidGrant; ErrorCode gives the OAuth error code to send the client. Raw credentials are
// Secret values, peppers Key values: neither prints, logs or marshals its content.
//
// Files: store.go (the types and their construction), config.go, tx.go (transactions, the
// caller's and the store's own), refresh.go (issue and rotation), replay.go (revocation on replay),
// token.go (reads of a presented token), code.go, state.go, family.go, cleanup.go, stats.go,
// replica.go (the reads a hot standby may serve, Config.ReadReplica), secret.go (secrets,
// peppers, digests), validate.go, convert.go (rows to the package's types), errors.go and event.go.
package repository
