package repository

import (
	"errors"
	"fmt"
)

// ErrInvalidGrant is what every refused refresh token or code is, whatever the cause. Send the
// OAuth client "invalid_grant" (RFC 6749 §5.2) for any error that matches it, and nothing more:
// the specific causes below are for the service's own logs and metrics (I5).
var ErrInvalidGrant = errors.New("invalid_grant")

// The causes of an invalid grant. Each matches ErrInvalidGrant with errors.Is, and itself.
var (
	// ErrTokenNotFound: the token is unknown, malformed, or was cleaned up long after it expired.
	ErrTokenNotFound = grantError("refresh token not found")
	// ErrWrongClient: the token or code was issued to another client. Nothing was consumed.
	ErrWrongClient = grantError("issued to another client")
	// ErrTokenExpired: the token's idle lifetime, or its family's absolute lifetime, has passed.
	// Nothing was consumed.
	ErrTokenExpired = grantError("refresh token expired")
	// ErrTokenConsumed: the token was already used. Returned by reads that change nothing (Peek);
	// Rotate reports a consumed token as ErrReplayDetected.
	ErrTokenConsumed = grantError("refresh token already used")
	// ErrSenderMismatch: the family is bound to a key (RFC 9449 DPoP, RFC 8705 mTLS) and the
	// request did not prove possession of it. Nothing was consumed.
	ErrSenderMismatch = grantError("bound to another key")
	// ErrFamilyRevoked: the token's family was revoked earlier.
	ErrFamilyRevoked = grantError("refresh token family revoked")
	// ErrReplayDetected: an already consumed token was presented again, which is evidence that it
	// was stolen; its whole family is revoked (RFC 6819 §5.2.2.3, RFC 9700 §4.14.2).
	ErrReplayDetected = grantError("refresh token replay detected; family revoked")
)

// The causes of a refused authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6). Each matches
// ErrInvalidGrant. A refused exchange consumes nothing; so a client whose request was wrong can
// retry with the right one, and an interceptor without the verifier can neither use the code nor
// burn it.
var (
	// ErrCodeNotFound: the code is unknown or malformed.
	ErrCodeNotFound = grantError("authorization code not found")
	// ErrCodeExpired: the code's lifetime has passed.
	ErrCodeExpired = grantError("authorization code expired")
	// ErrRedirectMismatch: the redirect URI differs from the authorization request's.
	ErrRedirectMismatch = grantError("redirect_uri does not match the authorization request")
	// ErrPKCEMismatch: the code verifier does not match the code challenge, is malformed, is
	// missing, or was sent for a code issued without a challenge (RFC 9700 §2.1.1).
	ErrPKCEMismatch = grantError("PKCE verification failed")
	// ErrCodeReplayDetected: a code already exchanged was presented again, with everything its
	// first use proved; the family it produced is revoked (RFC 6749 §4.1.2).
	ErrCodeReplayDetected = grantError("authorization code replay detected; grant revoked")
)

// ErrStateNotFound is returned by ConsumeState for a state that is unknown, expired or already
// consumed; treat the callback as forged.
var ErrStateNotFound = errors.New("oauthstore: state not found, expired or already used")

// ErrInvalidScope is returned when a rotation asks for scope beyond what was granted (RFC 6749
// §6); send the client "invalid_scope". Nothing was consumed. It is not an invalid grant.
var ErrInvalidScope = errors.New("invalid_scope: requested scope exceeds the granted scope")

// ErrInvalidTarget is returned when an access token is asked for an audience the grant does not
// allow (RFC 8707 §2.2, "invalid_target"). Nothing changes.
var ErrInvalidTarget = errors.New("invalid_target: requested audience is not among the grant's resources")

// ErrFamilyNotFound is returned by operations addressed to a family id that does not exist.
var ErrFamilyNotFound = errors.New("oauthstore: family not found")

// ErrInvalidInput is matched by every *InputError: input the package refuses before it reaches
// the database. Such a call changes nothing.
var ErrInvalidInput = errors.New("oauthstore: invalid input")

// ErrPepperTooShort is returned by New and ParsePepper for a pepper shorter than MinPepperBytes.
var ErrPepperTooShort = fmt.Errorf("oauthstore: pepper must be at least %d bytes", MinPepperBytes)

// ErrNoPepper is returned by PepperFromEnv when the variable is unset or empty.
var ErrNoPepper = errors.New("oauthstore: no pepper configured")

type grantErr struct{ cause string }

func grantError(cause string) error { return &grantErr{cause: cause} }

func (e *grantErr) Error() string { return "invalid_grant: " + e.cause }

// Is makes every cause match ErrInvalidGrant.
func (e *grantErr) Is(target error) bool { return target == ErrInvalidGrant }

// InputError describes refused input: which field and what is wrong with it. It never carries the
// value itself, which may be a secret.
type InputError struct {
	Field   string
	Problem string
}

func (e *InputError) Error() string {
	return "oauthstore: invalid input: " + e.Field + ": " + e.Problem
}

// Is makes every InputError match ErrInvalidInput.
func (e *InputError) Is(target error) bool { return target == ErrInvalidInput }

func inputError(field, problem string) error { return &InputError{Field: field, Problem: problem} }

// ErrorCode returns the OAuth 2 error code (RFC 6749 §5.2) to send a client for an error of this
// package: "invalid_grant" for every refused token whatever the cause, "invalid_scope",
// "invalid_target" (RFC 8707),
// "invalid_request" for refused input, and "server_error" for anything else. Send the code, not
// err.Error(): the message names the cause, which is for the service's own logs.
func ErrorCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrInvalidGrant):
		return "invalid_grant"
	case errors.Is(err, ErrInvalidScope):
		return "invalid_scope"
	case errors.Is(err, ErrInvalidTarget):
		return "invalid_target"
	case errors.Is(err, ErrInvalidInput), errors.Is(err, ErrStateNotFound):
		return "invalid_request"
	}
	return "server_error"
}

// ErrNotReadCommitted is returned by every call on a Store made by WithDB (or New given a pgx.Tx)
// whose transaction is not READ COMMITTED. Such a call changes nothing. Begin the transaction
// with pgx.TxOptions{IsoLevel: pgx.ReadCommitted} when the database or role defaults to a
// stricter level.
var ErrNotReadCommitted = errors.New("oauthstore: the caller's transaction must be READ COMMITTED")
