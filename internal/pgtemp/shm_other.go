//go:build !(linux && (amd64 || arm64 || arm || riscv64 || loong64 || mips64 || mips64le))

package pgtemp

// removeSharedMemory is a no-op where the System V shared memory system
// calls are not directly available; a killed server's segment is left for
// the operating system to reclaim.
func removeSharedMemory(dataDir string) {}
