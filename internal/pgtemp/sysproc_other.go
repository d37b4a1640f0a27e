//go:build unix && !linux

package pgtemp

import "syscall"

// sysProcAttr returns the attributes for initdb and postgres. Only Linux
// has a parent-death signal; elsewhere a server whose parent dies without
// calling Stop keeps running until it is stopped by other means.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential: cred,
		Setpgid:    true,
	}
}
