// Package testlog keeps a log's output for a test to read while the code
// under test writes it from several goroutines.
package testlog

import (
	"bytes"
	"sync"
)

// Buffer is a log's output: an io.Writer for a slog handler, safe for
// concurrent use, whose String a test reads at any time.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
