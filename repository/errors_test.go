package repository

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorCode_OneCodePerClassWhateverTheCause(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{ErrTokenNotFound, "invalid_grant"},
		{ErrWrongClient, "invalid_grant"},
		{ErrTokenExpired, "invalid_grant"},
		{ErrTokenConsumed, "invalid_grant"},
		{ErrSenderMismatch, "invalid_grant"},
		{ErrFamilyRevoked, "invalid_grant"},
		{fmt.Errorf("wrapped: %w", ErrReplayDetected), "invalid_grant"},
		{ErrInvalidScope, "invalid_scope"},
		{inputError("client_id", "empty"), "invalid_request"},
		{ErrFamilyNotFound, "server_error"},
		{errors.New("connection reset"), "server_error"},
	} {
		if got := ErrorCode(c.err); got != c.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	// Each cause is itself and an invalid grant, and no other cause.
	causes := []error{ErrTokenNotFound, ErrWrongClient, ErrTokenExpired, ErrTokenConsumed, ErrSenderMismatch, ErrFamilyRevoked, ErrReplayDetected}
	for i, a := range causes {
		if !errors.Is(a, ErrInvalidGrant) {
			t.Errorf("%v is not an invalid grant", a)
		}
		for j, b := range causes {
			if (i == j) != errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, errors.Is(a, b))
			}
		}
	}
}
