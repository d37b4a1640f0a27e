//go:build !linux

package bench

type cpuSample struct{}

func sampleCPU(int) cpuSample { return cpuSample{} }

func postmasterPID(string) int { return 0 }

// since is unknown off Linux.
func (cpuSample) since(cpuSample) (process, server, machine float64) { return 0, -1, 0 }
