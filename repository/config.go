package repository

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults and bounds of the configuration.
const (
	DefaultRefreshTokenTTL = 30 * 24 * time.Hour
	// MaxTTL bounds every lifetime the package accepts.
	MaxTTL = 10 * 365 * 24 * time.Hour
	// MaxGraceWindow bounds Config.GraceWindow: the window weakens replay detection for its length.
	MaxGraceWindow = 10 * time.Minute
	// MaxGraceReuses bounds Config.GraceMaxReuses.
	MaxGraceReuses = 100
	// DefaultGraceWindow is the grace window of a zero Config: long enough for a client's
	// automatic resend (golang.org/x/oauth2 resends a failed refresh at once), for tabs or
	// processes refreshing together, and for a mobile client retrying after a short timeout;
	// short enough that a stolen parent is of use to a thief only in the seconds after the
	// victim's own refresh, and detected as a replay after that.
	DefaultGraceWindow = 30 * time.Second
	// DefaultGraceReuses is how many times a zero Config lets one parent be presented again within
	// the window: a resend per tab for a handful of tabs.
	DefaultGraceReuses = 10
	// StrictRotation, as Config.GraceWindow, turns the grace window off: every consumed token
	// presented again is a replay.
	StrictRotation time.Duration = -1
)

// Config configures a Store.
type Config struct {
	// Pepper keys the digests of every stored credential: at least MinPepperBytes of random data,
	// kept outside the database. It is a one-key ring with ID "default"; set Peppers instead to
	// rotate peppers. Exactly one of Pepper and Peppers must be set.
	Pepper Key
	// Peppers is the pepper ring, the current pepper first. New digests use the current pepper;
	// presented credentials are looked up under every pepper of the ring, and a rotation moves the
	// family to the current one. A credential made with a pepper no longer in the ring is unknown;
	// one made with a retired pepper (Pepper.Retired) is recognised as evidence, never accepted.
	// PepperFromEnv reads a ring from OAUTH_AT_REST_PEPPER.
	Peppers []Pepper
	// RefreshTokenTTL is the idle lifetime of each refresh token: a family whose current token is
	// not rotated within it dies. Zero means DefaultRefreshTokenTTL.
	RefreshTokenTTL time.Duration
	// FamilyLifetime is the default absolute lifetime of a family, from its issue; no token of the
	// family outlives it, and rotation never extends it. Zero means none (IssueRequest.Lifetime
	// can still set one).
	FamilyLifetime time.Duration
	// GraceWindow lets a client whose rotation response was lost, or two tabs refreshing at once,
	// present the parent of its family's current token again, within this long after it was
	// consumed, and get the same current token back as long as that is unused: one live token,
	// no fork. Anything else consumed is a replay. Zero means DefaultGraceWindow; StrictRotation
	// turns it off. Within the window, a thief who presents the parent gets the same token as
	// the victim; the next divergence is detected as a replay.
	GraceWindow time.Duration
	// GraceMaxReuses is how many times one consumed token may be presented within the window.
	// Zero means DefaultGraceReuses.
	GraceMaxReuses int
	// AccessTokenTTL is the default lifetime of access tokens (AccessRequest.TTL); zero means
	// DefaultAccessTokenTTL. At most MaxAccessTokenTTL.
	AccessTokenTTL time.Duration
	// CodeTTL is the lifetime of authorization codes; zero means DefaultCodeTTL (60 s). At most
	// MaxCodeTTL (10 minutes, RFC 6749 §4.1.2).
	CodeTTL time.Duration
	// PKCEOptional lets CreateCode accept a request without a PKCE challenge. OAuth 2.1 and the MCP
	// authorization specification require PKCE; leave it false unless a confidential client cannot.
	PKCEOptional bool
	// AllowPlainPKCE accepts the "plain" PKCE method. S256 is always accepted; plain protects only
	// against an attacker who cannot read the authorization request (RFC 7636 §7.2).
	AllowPlainPKCE bool
	// Logger receives replay detections, revocations and grace reuses. Nil means slog.Default().
	Logger *slog.Logger
	// OnEvent, when set, is called with every replay detection, revocation and grace reuse, after
	// the change is committed (inside a caller's transaction: after its savepoint is released).
	// It runs on the caller's goroutine: keep it fast.
	OnEvent func(context.Context, Event)
	// Clock, when set, replaces the database clock in every statement. For tests; production
	// leaves it nil so that PostgreSQL's now() rules.
	Clock func() time.Time
	// RevocationConnect opens a connection of the store's own, used for one thing: committing the
	// revocation of a family whose consumed token or code was replayed inside a caller's
	// transaction, independently of that transaction (see WithDB). Nil derives it from the handle
	// given to New: from a *pgxpool.Pool, a new connection with the pool's settings, running its
	// BeforeConnect and AfterConnect hooks each time; from a *pgx.Conn or pgx.Tx (given to New or,
	// for another DBTX, to WithDB), the settings that connection was opened with, as they were
	// then — set RevocationConnect where they do not last, such as short-lived credentials.
	RevocationConnect func(ctx context.Context) (*pgx.Conn, error)
	// ReadReplica, when set, is a hot standby of the database, typically a *pgxpool.Pool of it,
	// that serves the reads which may lag behind the primary: Admin.ActiveFamilies, Admin.Stats
	// and Admin.CleanupBacklog. Each runs there in a read-only transaction whose first statement
	// asks the standby how stale it is; the read runs on the primary instead when the standby is
	// staler than MaxReplicaStaleness or cannot show how stale it is, is not in recovery
	// (promoted, or a primary given by mistake), or fails. Admin.ReplicaReads counts both paths.
	//
	// Whatever decides a credential's fate never runs there: rotation, exchange, Peek, Lookup,
	// revocation, Family, PepperUsage, and every write run on the primary, and so does every read
	// of a Store or Admin in a caller's transaction (WithDB), which must see its own writes.
	//
	// The standby must stream from the primary itself, not from another standby. It shows how
	// stale it is by the last transaction it replayed and, to a role with the privileges of
	// pg_read_all_stats, by the last message from the primary, which an idle primary sends only
	// when the standby asks (every wal_receiver_timeout/2, 30 s by default): while the primary is
	// idle, reads fall back. The check gets MaxReplicaStaleness, one second at most, to obtain a
	// connection and answer; give the pool a connect_timeout as well.
	ReadReplica DBTX
	// MaxReplicaStaleness bounds how stale a read served by ReadReplica may be: it shows every
	// change committed on the primary at least this long before the call began, so a family
	// revoked longer ago is never listed as active (one revoked more recently may still be; it is
	// refused all the same). The standby compares the primary's commit and message timestamps
	// with its own clock, so the bound holds as far as the two servers' clocks agree; a commit
	// made with synchronous_commit off may show up to three wal_writer_delay later than that.
	// Required, and positive, when ReadReplica is set; set only with it.
	MaxReplicaStaleness time.Duration
}

// withDefaults returns cfg with every zero value that has a default replaced by it. It checks
// nothing: validate does.
func (cfg Config) withDefaults() Config {
	if cfg.RefreshTokenTTL == 0 {
		cfg.RefreshTokenTTL = DefaultRefreshTokenTTL
	}
	if cfg.GraceWindow == 0 {
		cfg.GraceWindow = DefaultGraceWindow
	}
	if cfg.GraceMaxReuses == 0 {
		cfg.GraceMaxReuses = DefaultGraceReuses
	}
	if cfg.CodeTTL == 0 {
		cfg.CodeTTL = DefaultCodeTTL
	}
	if cfg.AccessTokenTTL == 0 {
		cfg.AccessTokenTTL = DefaultAccessTokenTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// validate checks a configuration that withDefaults completed. A store that mints and checks
// credentials (withPepper) needs a valid pepper ring, which ring returns.
func (cfg Config) validate(withPepper bool) error {
	if withPepper {
		if !cfg.Pepper.IsZero() && cfg.Peppers != nil {
			return inputError("pepper", "set Pepper or Peppers, not both")
		}
		if !cfg.Pepper.IsZero() && cfg.Pepper.Len() < MinPepperBytes {
			return ErrPepperTooShort
		}
		if err := validateRing(cfg.ring()); err != nil {
			return err
		}
	}
	if err := validateTTL("RefreshTokenTTL", cfg.RefreshTokenTTL); err != nil {
		return err
	}
	if cfg.FamilyLifetime != 0 {
		if err := validateTTL("FamilyLifetime", cfg.FamilyLifetime); err != nil {
			return err
		}
	}
	switch {
	case cfg.GraceWindow != StrictRotation && (cfg.GraceWindow < 0 || cfg.GraceWindow > MaxGraceWindow):
		return inputError("GraceWindow", "outside 0..10 minutes, and not StrictRotation")
	case cfg.GraceMaxReuses < 0 || cfg.GraceMaxReuses > MaxGraceReuses:
		return inputError("GraceMaxReuses", "outside 0..100")
	case cfg.CodeTTL < time.Second || cfg.CodeTTL > MaxCodeTTL:
		return inputError("CodeTTL", "outside 1s..10m")
	case cfg.AccessTokenTTL < time.Second || cfg.AccessTokenTTL > MaxAccessTokenTTL:
		return inputError("AccessTokenTTL", "outside 1s..24h")
	}
	return cfg.validateReplica()
}

// validateReplica checks ReadReplica and MaxReplicaStaleness, which come together.
func (cfg Config) validateReplica() error {
	if cfg.ReadReplica == nil {
		if cfg.MaxReplicaStaleness != 0 {
			return inputError("MaxReplicaStaleness", "set without ReadReplica")
		}
		return nil
	}
	if _, ok := cfg.ReadReplica.(pgx.Tx); ok {
		// A transaction would pin one snapshot, and its isolation level is the caller's: each read
		// needs a transaction of its own, begun after the check.
		return inputError("ReadReplica", "a transaction; give a pool or a connection of the standby")
	}
	if cfg.MaxReplicaStaleness <= 0 {
		return inputError("MaxReplicaStaleness", "not positive (required with ReadReplica)")
	}
	return nil
}

// ring is the pepper ring the configuration names: Peppers, or Pepper as a ring of one.
func (cfg Config) ring() []Pepper {
	if !cfg.Pepper.IsZero() {
		return []Pepper{{ID: DefaultPepperID, Secret: cfg.Pepper}}
	}
	return cfg.Peppers
}
