package pgtemp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// debianRoot is where Debian and Ubuntu install each PostgreSQL major
// version's server binaries, off PATH.
const debianRoot = "/usr/lib/postgresql"

// FindBinDir returns the directory holding the PostgreSQL server binaries
// initdb and postgres. It tries, in order:
//
//  1. $PG_BINDIR, if set (and nothing else, so a wrong value is reported
//     rather than silently ignored);
//  2. the output of "pg_config --bindir", if pg_config is on PATH;
//  3. the highest-numbered /usr/lib/postgresql/*/bin (Debian, Ubuntu);
//  4. the directory of initdb on PATH.
//
// A directory is only accepted if it contains both initdb and postgres.
// If none does, the error wraps ErrNoServerBinaries.
func FindBinDir() (string, error) {
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("%w (PG_BINDIR: %v)", ErrNoServerBinaries, err)
		}
		return dir, nil
	}

	var tried []string
	if dir, err := pgConfigBinDir(); err != nil {
		tried = append(tried, "pg_config: "+err.Error())
	} else if err := checkBinDir(dir); err != nil {
		tried = append(tried, "pg_config --bindir: "+err.Error())
	} else {
		return dir, nil
	}

	dirs := debianBinDirs()
	for _, dir := range dirs {
		if checkBinDir(dir) == nil {
			return dir, nil
		}
	}
	tried = append(tried, fmt.Sprintf("%s/*/bin: %d candidate(s), none complete", debianRoot, len(dirs)))

	if path, err := exec.LookPath("initdb"); err != nil {
		tried = append(tried, "PATH: initdb not found")
	} else {
		dir := filepath.Dir(path)
		if checkBinDir(dir) == nil {
			return dir, nil
		}
		// e.g. /usr/bin/initdb -> /usr/lib/postgresql/NN/bin/initdb
		if real, err := filepath.EvalSymlinks(path); err == nil && checkBinDir(filepath.Dir(real)) == nil {
			return filepath.Dir(real), nil
		}
		tried = append(tried, "PATH: no postgres next to "+path)
	}
	return "", fmt.Errorf("%w (searched: %s)", ErrNoServerBinaries, strings.Join(tried, "; "))
}

// pgConfigBinDir asks pg_config on PATH for its bindir.
func pgConfigBinDir() (string, error) {
	path, err := exec.LookPath("pg_config")
	if err != nil {
		return "", errors.New("not on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--bindir").Output()
	if err != nil {
		return "", fmt.Errorf("%s --bindir: %w", path, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("%s --bindir: empty output", path)
	}
	return dir, nil
}

// debianBinDirs returns /usr/lib/postgresql/<version>/bin directories,
// highest version first.
func debianBinDirs() []string {
	entries, err := os.ReadDir(debianRoot)
	if err != nil {
		return nil
	}
	type candidate struct {
		version []int
		dir     string
	}
	var cs []candidate
	for _, e := range entries {
		v, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		cs = append(cs, candidate{v, filepath.Join(debianRoot, e.Name(), "bin")})
	}
	slices.SortFunc(cs, func(a, b candidate) int { return slices.Compare(b.version, a.version) })
	dirs := make([]string, len(cs))
	for i, c := range cs {
		dirs[i] = c.dir
	}
	return dirs
}

// parseVersion parses a major version directory name such as "15" or "9.6".
func parseVersion(s string) ([]int, bool) {
	var v []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

// checkBinDir reports why dir is not usable as a server binary directory.
func checkBinDir(dir string) error {
	var missing []string
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s has no executable %s", dir, strings.Join(missing, " or "))
	}
	return nil
}
