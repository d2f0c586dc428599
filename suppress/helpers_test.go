package suppress_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// bundle is a JetStream server, a client and a store on it.
type bundle struct {
	srv   *jstest.Server
	js    jetstream.JetStream
	store *suppress.Store
	clock *clock
}

// setup starts a JetStream server and opens a store on it with a clock
// that the test may move.
func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{srv: jstest.Start(t), clock: newClock()}
	_, b.js = b.srv.Connect(t)
	b.store = b.open(t, b.js)
	return b
}

// open opens another store on js (another connection, when js is one).
func (b *bundle) open(t *testing.T, js jetstream.JetStream) *suppress.Store {
	t.Helper()
	s, err := suppress.Open(t.Context(), js, schema.Names{}, suppress.Options{Now: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checker runs a Checker of s until the test ends, and waits until it is
// ready.
func checker(t *testing.T, s *suppress.Store) *suppress.Checker {
	t.Helper()
	c, err := suppress.NewChecker(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	jstest.Serve(t, c.Run, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitChecker waits, on the checker's change events, until cond holds,
// for at most d.
func waitChecker(t *testing.T, c *suppress.Checker, d time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(d)
	for {
		changed := c.Changed() // before cond, so that no change is missed
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("the checker did not see %s within %s", what, d)
		}
	}
}

// clock is a settable clock, safe for concurrent use; it starts at the
// real time so that the server's own times stay near.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Millisecond)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// add adds an entry or fails the test.
func add(t *testing.T, s *suppress.Store, address string, r suppress.Reason, ttl time.Duration) suppress.Change {
	t.Helper()
	ch, err := s.Add(t.Context(), suppress.Entry{Address: address, Reason: r}, ttl)
	if err != nil {
		t.Fatalf("Add(%s, %s): %v", address, r, err)
	}
	return ch
}
