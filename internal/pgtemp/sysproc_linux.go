package pgtemp

import "syscall"

// sysProcAttr returns the attributes for initdb and postgres.
//
// Pdeathsig kills the child if the process that started it dies without
// calling Stop, so no server outlives a crashed or interrupted test run. (The
// kernel resets the parent-death signal when credentials change; the Go
// runtime sets it after switching to cred, so it survives.) Setpgid puts the
// child in its own process group, so a Ctrl-C in the terminal reaches only
// our process, which can then shut the server down cleanly.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential: cred,
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
}
