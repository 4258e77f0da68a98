package drivers

import "sync"

// Listening is what a driver that listens or connects (an alarm receiver,
// a station broker) tells tests and tools: Ready is closed once it is up,
// Addr then says where. Embed it; the zero value is ready to use.
type Listening struct {
	mu    sync.Mutex
	ready chan struct{}
	once  sync.Once
	addr  string
}

func (l *Listening) readyC() chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ready == nil {
		l.ready = make(chan struct{})
	}
	return l.ready
}

// Ready is closed once the driver is up.
func (l *Listening) Ready() <-chan struct{} { return l.readyC() }

// Addr is where the driver listens (or what it connected to), once Ready.
func (l *Listening) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// SetAddr says where the driver listens.
func (l *Listening) SetAddr(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addr = addr
}

// Up closes Ready (once).
func (l *Listening) Up() {
	c := l.readyC()
	l.once.Do(func() { close(c) })
}
