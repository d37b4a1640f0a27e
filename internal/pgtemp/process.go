package pgtemp

import (
	"os/exec"
	"runtime"
)

// process is a started command whose Wait runs in the background.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait has returned
	err  error         // Wait's result; read only after done is closed
}

// startProcess starts cmd and waits for it in the background.
//
// Both happen on a goroutine locked to its OS thread for the lifetime of the
// child. On Linux the child's parent-death signal (see sysProcAttr) fires
// when the OS thread that forked it exits, not when the process does
// (https://go.dev/issue/27505), and the Go runtime terminates a thread
// whenever a goroutine exits while locked to it. Started from an ordinary
// goroutine, the child could therefore be killed at a random moment because
// some unrelated goroutine locked and abandoned the thread it happened to be
// forked from. Keeping the forking thread locked to this goroutine means no
// other goroutine can run on it until the child has exited.
func startProcess(cmd *exec.Cmd) (*process, error) {
	p := &process{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: when this goroutine returns, the
		// runtime discards the thread, which is harmless once the child
		// has exited.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}
