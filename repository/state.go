package repository

import (
	"context"
	"encoding/json"
	"time"

	"github.com/oauthstore/oauthstore/db"
)

// State binding lifetimes.
const (
	DefaultStateTTL = 10 * time.Minute
	MaxStateTTL     = time.Hour
)

// StateRequest is what the callback of an authorization request will need.
type StateRequest struct {
	ClientID    string
	RedirectURI string
	// ReturnTo is where to send the user once the callback is done.
	ReturnTo string
	// Data is any further JSON the callback needs, at most 16 KiB; nil means {}.
	Data json.RawMessage
	// TTL is the binding's lifetime; zero means DefaultStateTTL.
	TTL time.Duration
}

// IssuedState is a new state value to send in the authorization request, once.
type IssuedState struct {
	State     Secret
	ExpiresAt time.Time
}

// StateBinding is what a consumed state was bound to.
type StateBinding struct {
	ClientID    string
	RedirectURI string
	ReturnTo    string
	Data        json.RawMessage
	CreatedAt   time.Time
	ExpiresAt   time.Time
}

// CreateState mints a state value for an authorization request (the CSRF defence of RFC 6749
// §10.12) and stores its digest with what the callback will need.
func (s *Store) CreateState(ctx context.Context, req StateRequest) (*IssuedState, error) {
	if err := validateID("client_id", req.ClientID); err != nil {
		return nil, err
	}
	if err := validateRedirectURI(req.RedirectURI); err != nil {
		return nil, err
	}
	if req.ReturnTo != "" {
		if err := validateURI("return_to", req.ReturnTo); err != nil {
			return nil, err
		}
	}
	data, err := validateJSON("data", req.Data)
	if err != nil {
		return nil, err
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = DefaultStateTTL
	} else if ttl < time.Second || ttl > MaxStateTTL {
		return nil, inputError("ttl", "outside 1s..1h")
	}
	state, digest, pepperID := s.state.mint()
	expires, err := s.q.StateCreate(ctx, s.dbtx, db.StateCreateParams{
		Digest:      digest,
		PepperID:    pepperID,
		ClientID:    req.ClientID,
		RedirectURI: req.RedirectURI,
		ReturnTo:    optionalText(req.ReturnTo),
		Data:        data,
		Now:         s.now(),
		TTL:         ttl,
	})
	if err != nil {
		return nil, dbError("create state", err)
	}
	return &IssuedState{State: state, ExpiresAt: expires.UTC()}, nil
}

// ConsumeState returns what a state value was bound to and deletes the binding, atomically: of
// any number of concurrent or later calls with the same state, exactly one succeeds. An unknown,
// expired or used state is ErrStateNotFound.
func (s *Store) ConsumeState(ctx context.Context, state string) (*StateBinding, error) {
	digests, ok := s.state.digestPresented(state)
	if !ok {
		return nil, ErrStateNotFound
	}
	// A state made under a retired pepper is not accepted; a concurrent consume that wins under a
	// stricter default isolation level leaves this one a serialization failure, which the READ
	// COMMITTED retry turns into "not found".
	var row db.StateConsumeRow
	err := s.readCommitted(ctx, "consume state", func(q DBTX) (err error) {
		row, err = s.q.StateConsume(ctx, q, db.StateConsumeParams{Digests: s.state.accepted(digests), Now: s.now()})
		return err
	})
	if err := interpretError("consume state", err, ErrStateNotFound); err != nil {
		return nil, err
	}
	return stateBinding(row), nil
}

// PeekState returns what a state value is bound to without consuming it, for an authorization
// request that is read more than once before it is answered: an authorization server that keeps
// its pending requests as state bindings reads one from its sign-in page and again from its
// callback, and consumes it with ConsumeState when it answers. An unknown, expired or consumed
// state is ErrStateNotFound.
func (s *Store) PeekState(ctx context.Context, state string) (*StateBinding, error) {
	digests, ok := s.state.digestPresented(state)
	if !ok {
		return nil, ErrStateNotFound
	}
	row, err := s.q.StateGet(ctx, s.dbtx, db.StateGetParams{Digests: s.state.accepted(digests), Now: s.now()})
	if err := interpretError("peek state", err, ErrStateNotFound); err != nil {
		return nil, err
	}
	return stateBinding(db.StateConsumeRow(row)), nil
}
