package tests

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/oauthstore/oauthstore/tests/dbtest"
)

func TestMain(m *testing.M) {
	dbtest.Main(m, func() {
		fmt.Fprintf(os.Stderr, "secret hygiene: %d raw tokens, codes, states and peppers looked for in the tables and logs of %d test databases: %d found\n",
			hygiene.secrets.Load(), hygiene.databases.Load(), hygiene.found.Load())
	})
}

// hygiene counts, over the whole run, the secrets each test looked for after it ran (I6).
var hygiene struct{ secrets, databases, found atomic.Int64 }
