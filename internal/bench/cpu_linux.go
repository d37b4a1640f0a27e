//go:build linux

package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times; 100 on every Linux architecture Go
// supports.
const clockTicks = 100

// cpuSample is, at one instant, the CPU time of this process, of the PostgreSQL server (the
// postmaster, the children it reaped and those still running), and the machine's busy and total
// CPU ticks.
type cpuSample struct {
	at          time.Time
	process     time.Duration
	server      time.Duration // -1: unknown
	busy, total uint64
	ok          bool
}

func sampleCPU(serverPID int) cpuSample {
	s := cpuSample{at: time.Now(), server: -1}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return s
	}
	s.process = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if serverPID > 0 {
		s.server = serverCPU(serverPID)
	}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) < 5 || string(fields[0]) != "cpu" {
		return s
	}
	for i, f := range fields[1:] {
		v, err := strconv.ParseUint(string(f), 10, 64)
		if err != nil {
			return s
		}
		// user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
		// counted in user.
		if i >= 8 {
			break
		}
		s.total += v
		if i != 3 && i != 4 {
			s.busy += v
		}
	}
	s.ok = true
	return s
}

// serverCPU sums the CPU time of the postmaster, including the children it has reaped, and of its
// running children (backends, autovacuum, checkpointer, …). -1 when /proc does not tell.
func serverCPU(postmaster int) time.Duration {
	utime, stime, cutime, cstime, _, ok := procStat(postmaster)
	if !ok {
		return -1
	}
	ticks := utime + stime + cutime + cstime
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == postmaster {
			continue
		}
		u, s, _, _, ppid, ok := procStat(pid)
		if ok && ppid == postmaster {
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// procStat reads a process's own and reaped children's CPU ticks and its parent from
// /proc/<pid>/stat.
func procStat(pid int) (utime, stime, cutime, cstime uint64, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return
	}
	// The command name is in parentheses and may contain spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
	if len(f) < 15 {
		return
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return
	}
	var v [4]uint64
	for k := range v {
		if v[k], err = strconv.ParseUint(f[11+k], 10, 64); err != nil {
			return
		}
	}
	return v[0], v[1], v[2], v[3], ppid, true
}

// postmasterPID reads the server's PID from postmaster.pid in its data directory, when the server
// runs on this machine and the file is readable; 0 otherwise.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// since returns the cores this process, the server and the whole machine kept busy between s0 and
// s; server is -1 when unknown.
func (s cpuSample) since(s0 cpuSample) (process, server, machine float64) {
	if !s.ok || !s0.ok || s.total <= s0.total {
		return 0, -1, 0
	}
	wall := s.at.Sub(s0.at).Seconds()
	if wall <= 0 {
		return 0, -1, 0
	}
	process = (s.process - s0.process).Seconds() / wall
	server = -1
	if s.server >= 0 && s0.server >= 0 {
		server = (s.server - s0.server).Seconds() / wall
	}
	machine = float64(s.busy-s0.busy) / float64(s.total-s0.total) * float64(numCPU())
	return process, server, machine
}
