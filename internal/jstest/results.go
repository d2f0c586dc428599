package jstest

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// Results records result events as a test sees them, by Id, and lets the
// test wait for them instead of sleeping. It is safe for concurrent use.
type Results struct {
	mu     sync.Mutex
	cond   *sync.Cond
	byID   map[string][]schema.Result
	count  int
	finals int
}

// NewResults returns an empty record; Record adds to it.
func NewResults() *Results {
	l := &Results{byID: map[string][]schema.Result{}}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// Record adds one event.
func (l *Results) Record(r schema.Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byID[r.Id] = append(l.byID[r.Id], r)
	l.count++
	if r.Final() {
		l.finals++
	}
	l.cond.Broadcast()
}

// WatchResults subscribes to every result event published on
// <prefix>.result.> with a core NATS subscription, so it sees events as
// they are published (including a republished one twice), until cleanup.
func WatchResults(t testing.TB, nc *nats.Conn, prefix string) *Results {
	t.Helper()
	l := NewResults()
	sub, err := nc.Subscribe(prefix+".result.>", func(m *nats.Msg) {
		var r schema.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("result not JSON: %v: %s", err, m.Data)
			return
		}
		l.Record(r)
	})
	if err != nil {
		t.Fatal(err)
	}
	// A test must never miss an event because it was slow to read.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// StoredResults follows every result event stored in the stream (default
// JETMAIL_RESULTS), from the first, with an ordered consumer. Unlike
// WatchResults it misses nothing across reconnects and sees each stored
// event once: it is the durable record that producers read.
func StoredResults(t testing.TB, js jetstream.JetStream, stream string) *Results {
	t.Helper()
	if stream == "" {
		stream = schema.DefaultNames().ResultStream
	}
	l := NewResults()
	handler := func(m jetstream.Msg) {
		var r schema.Result
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			t.Errorf("stored result not JSON: %v", err)
			return
		}
		l.Record(r)
	}
	// A request written to a connection just before its server went away
	// gets no answer: try again until one gets through.
	var cc jetstream.ConsumeContext
	Eventually(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return false
		}
		cc, err = c.Consume(handler)
		return err == nil
	})
	t.Cleanup(cc.Stop)
	return l
}

// WaitUntil blocks until cond is true or d passes (then the test fails,
// naming what). cond runs with the record locked: it must not call other
// methods of l; it may call the functions it is given, which read l.
func (l *Results) WaitUntil(t testing.TB, d time.Duration, what string, cond func(events func(id string) []schema.Result) bool) {
	t.Helper()
	timer := time.AfterFunc(d, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(d)
	l.mu.Lock()
	defer l.mu.Unlock()
	events := func(id string) []schema.Result { return l.byID[id] }
	for !cond(events) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		l.cond.Wait()
	}
}

// Final waits up to 20 s for the final result of id and returns it with
// every event of id seen so far.
func (l *Results) Final(t testing.TB, id string) (schema.Result, []schema.Result) {
	t.Helper()
	var fin schema.Result
	l.WaitUntil(t, 20*time.Second, "final result of "+id, func(events func(string) []schema.Result) bool {
		for _, r := range events(id) {
			if r.Final() {
				fin = r
				return true
			}
		}
		return false
	})
	return fin, l.Events(id)
}

// FinalsAtLeast waits up to d until n final events were seen.
func (l *Results) FinalsAtLeast(t testing.TB, n int, d time.Duration) {
	t.Helper()
	l.WaitUntil(t, d, "final results", func(func(string) []schema.Result) bool { return l.finals >= n })
}

// Events returns a copy of the events of id seen so far, in order.
func (l *Results) Events(id string) []schema.Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]schema.Result(nil), l.byID[id]...)
}

// IDs returns every Id seen so far.
func (l *Results) IDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]string, 0, len(l.byID))
	for id := range l.byID {
		ids = append(ids, id)
	}
	return ids
}

// Count is the number of events seen so far.
func (l *Results) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count
}

// Finals is the number of final events seen so far.
func (l *Results) Finals() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.finals
}
