//go:build linux && (amd64 || arm64 || arm || riscv64 || loong64 || mips64 || mips64le)

package pgtemp

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// removeSharedMemory removes the small System V shared memory segment the
// postmaster of dataDir registered in postmaster.pid. A clean shutdown
// removes it; a killed server leaves it behind until reboot, so we remove it
// after killing one.
//
// The segment is only removed if the key recorded in postmaster.pid still
// maps to the recorded id, so a reused id is never touched.
func removeSharedMemory(dataDir string) {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	// Line 7 holds the segment's key and id.
	lines := strings.Split(string(data), "\n")
	if len(lines) < 7 {
		return
	}
	fields := strings.Fields(lines[6])
	if len(fields) != 2 {
		return
	}
	key, err1 := strconv.ParseUint(fields[0], 10, 64)
	id, err2 := strconv.ParseUint(fields[1], 10, 64)
	if err1 != nil || err2 != nil || key == 0 {
		return
	}
	got, _, errno := syscall.Syscall(syscall.SYS_SHMGET, uintptr(key), 0, 0)
	if errno != 0 || uint64(got) != id {
		return
	}
	const ipcRMID = 0
	syscall.Syscall(syscall.SYS_SHMCTL, uintptr(id), ipcRMID, 0)
}
