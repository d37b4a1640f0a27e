//go:build linux

package bench

import (
	"runtime"
	"syscall"
	"time"
)

// prSetTimerSlack is prctl's PR_SET_TIMERSLACK (linux/prctl.h).
const prSetTimerSlack = 29

// lockPreciseThread prepares the calling goroutine for sleepUntil: it locks it to its thread for
// good (the thread ends with the goroutine) and sets the thread's timer slack to 1 ns, since the
// default of 50 µs would be added to every delay of a fraction of a millisecond.
func lockPreciseThread() {
	runtime.LockOSThread()
	_, _, _ = syscall.Syscall(syscall.SYS_PRCTL, prSetTimerSlack, 1, 0)
}

// sleepUntil blocks the thread until t with nanosleep. The Go runtime's own timers wake a thread
// that is idle in the network poller no sooner than after a millisecond, far too coarse for a
// delay of 100 µs; nanosleep wakes within some 10 µs.
func sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil) // EINTR: sleep the rest
	}
}
