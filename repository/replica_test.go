package repository

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// replicaTx is a pgx.Tx given as a replica, which the configuration refuses. Like unusedDB, it
// would panic if a statement were sent: constructing a Store or an Admin sends none.
type replicaTx struct{ pgx.Tx }

func TestConfig_ReadReplicaNeedsAPositiveMaxStaleness(t *testing.T) {
	primary := unusedDB{}
	for _, c := range []struct {
		name    string
		replica DBTX
		max     time.Duration
		field   string // "" when valid
	}{
		{"no replica", nil, 0, ""},
		{"replica with a bound", unusedDB{}, 500 * time.Millisecond, ""},
		{"replica without a bound", unusedDB{}, 0, "MaxReplicaStaleness"},
		{"replica with a negative bound", unusedDB{}, -time.Second, "MaxReplicaStaleness"},
		{"bound without a replica", nil, time.Second, "MaxReplicaStaleness"},
		{"a transaction as replica", replicaTx{}, time.Second, "ReadReplica"},
	} {
		cfg := Config{Pepper: NewKey(testPepper()), ReadReplica: c.replica, MaxReplicaStaleness: c.max}
		_, storeErr := New(primary, cfg)
		_, adminErr := NewAdmin(primary, cfg)
		for who, err := range map[string]error{"New": storeErr, "NewAdmin": adminErr} {
			if c.field == "" {
				if err != nil {
					t.Errorf("%s: %s: %v, want no error", c.name, who, err)
				}
				continue
			}
			var in *InputError
			if !errors.As(err, &in) || in.Field != c.field || !errors.Is(err, ErrInvalidInput) {
				t.Errorf("%s: %s: %v, want an *InputError for %s", c.name, who, err, c.field)
			}
		}
	}
}

func TestReplicaReads_ZeroWithoutReplica(t *testing.T) {
	a, err := NewAdmin(unusedDB{}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.ReplicaReads(); got != (ReplicaReads{}) || got.Fallbacks() != 0 {
		t.Errorf("ReplicaReads without a replica: %+v", got)
	}
}

// The replica is reached through one method, boundedStaleRead (and the methods of its type, which
// only it calls), so that no operation that decides a credential's fate can read it by accident:
// every use of the Admin's replica field is in newAdmin, boundedStaleRead, logReplicaFallback or
// ReplicaReads, and only ActiveFamilies, Stats and CleanupBacklog call boundedStaleRead.
func TestReplica_OnlyTheBoundedStaleReadReachesIt(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fieldUsers := map[string]bool{"newAdmin": true, "boundedStaleRead": true, "logReplicaFallback": true, "ReplicaReads": true}
	readCallers := map[string]bool{"ActiveFamilies": true, "Stats": true, "CleanupBacklog": true}
	var calls int
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.SelectorExpr:
					if n.Sel.Name == "replica" && !fieldUsers[fn.Name.Name] {
						t.Errorf("%s: %s uses the replica field", fset.Position(n.Pos()), fn.Name.Name)
					}
					if n.Sel.Name == "boundedStaleRead" {
						calls++
						if !readCallers[fn.Name.Name] {
							t.Errorf("%s: %s reads through boundedStaleRead", fset.Position(n.Pos()), fn.Name.Name)
						}
					}
				case *ast.KeyValueExpr:
					if k, ok := n.Key.(*ast.Ident); ok && k.Name == "replica" && !fieldUsers[fn.Name.Name] {
						t.Errorf("%s: %s sets the replica field", fset.Position(n.Pos()), fn.Name.Name)
					}
				}
				return true
			})
		}
	}
	if calls != len(readCallers) {
		t.Errorf("%d calls of boundedStaleRead, want one in each of %d methods", calls, len(readCallers))
	}
}
