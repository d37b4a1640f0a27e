package repository

import (
	"context"
	"log/slog"
)

// EventKind says what happened.
type EventKind string

// The events a Store reports to Config.Logger and Config.OnEvent.
const (
	// EventReplayDetected: a consumed token was presented again by its client. Its family is
	// revoked (FamilyRevoked tells whether by this replay or earlier). A replay of a family that
	// was already revoked is reported at most once a minute per family.
	EventReplayDetected EventKind = "replay_detected"
	// EventFamilyRevoked: a family was revoked by RevokeToken, RevokeFamily or RevokeFamilies.
	EventFamilyRevoked EventKind = "family_revoked"
	// EventCodeReplayDetected: an authorization code was presented again after its exchange; the
	// family it produced is revoked. A replay of a code whose family was already revoked is
	// reported at most once a minute per family.
	EventCodeReplayDetected EventKind = "code_replay_detected"
	// EventGraceReuse: the parent of a family's current token was presented again within the
	// grace window (a lost response, another tab), and got the same unused current token back.
	// It is not a replay. (A current token made before sealed copies were kept is replaced.)
	EventGraceReuse EventKind = "grace_reuse"
)

// Event describes a replay detection, revocation or grace reuse. It never carries a secret.
type Event struct {
	Kind     EventKind
	FamilyID string
	ClientID string
	UserID   string
	// Reason is the revocation reason, for EventFamilyRevoked and EventReplayDetected.
	Reason string
	// FamilyRevoked reports, for the replay events, whether this replay revoked the family and the
	// revocation is committed (the family may have been revoked before).
	FamilyRevoked bool
	// SessionID is the revoked family's OpenID Connect session id (Claims.SessionID), if any, for
	// back-channel logout.
	SessionID string
	// InCallerTx reports, for the replay events, that the revocation was made inside the caller's
	// transaction (Store.WithDB), because that transaction held or created the family; it
	// commits or rolls back with it.
	InCallerTx bool
}

func (a *Admin) emit(ctx context.Context, e Event) {
	level := slog.LevelInfo
	replay := e.Kind == EventReplayDetected || e.Kind == EventCodeReplayDetected
	if replay {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("event", string(e.Kind)),
		slog.String("family_id", e.FamilyID),
		slog.String("client_id", e.ClientID),
		slog.String("user_id", e.UserID),
	}
	if e.Reason != "" {
		attrs = append(attrs, slog.String("reason", e.Reason))
	}
	if e.SessionID != "" {
		attrs = append(attrs, slog.String("sid", e.SessionID))
	}
	if replay {
		attrs = append(attrs, slog.Bool("family_revoked_now", e.FamilyRevoked))
		if e.InCallerTx {
			attrs = append(attrs, slog.Bool("in_caller_tx", true))
		}
	}
	a.log.LogAttrs(ctx, level, "oauthstore: "+string(e.Kind), attrs...)
	if a.onEvent != nil {
		a.onEvent(ctx, e)
	}
}
