//go:build !linux

package bench

import "time"

// lockPreciseThread does nothing here: sleepUntil uses the Go runtime's timers, which may add up
// to a millisecond to a delay.
func lockPreciseThread() {}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }
