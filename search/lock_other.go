//go:build !unix

package search

import "os"

// lockFile opens path+".lock"; without flock(2) it locks nothing.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
}
