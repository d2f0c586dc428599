package search

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
)

// testBundle is a JetStream server with jetmail's streams, and an index
// in a temporary folder that follows its result stream.
type testBundle struct {
	srv     *jstest.Server
	js      jetstream.JetStream
	names   schema.Names
	results jetstream.Stream
	path    string
	idx     *Index
	stop    func() // stops Run
}

// setup starts a JetStream server with the worker's streams and an index
// following it.
func setup(t testing.TB) *testBundle {
	t.Helper()
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	names := schema.DefaultNames()
	top := jstest.EnsureStreams(t, js, names)
	b := &testBundle{srv: srv, js: js, names: names, results: top.Results, path: filepath.Join(t.TempDir(), "index", "search.db")}
	b.open(t)
	b.run(t)
	return b
}

// open opens the index at b.path, closed at cleanup.
func (b *testBundle) open(t testing.TB) {
	t.Helper()
	idx, err := Open(b.path, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	idx.pruneEvery = 50 * time.Millisecond
	t.Cleanup(func() { idx.Close() })
	b.idx = idx
}

// run runs the index's Run until cleanup or b.stop.
func (b *testBundle) run(t testing.TB) {
	t.Helper()
	idx := b.idx
	b.stop = jstest.Serve(t, func(ctx context.Context) error { return idx.Run(ctx, b.js, b.names) }, nil)
}

// restart stops Run, closes the index and opens it again from its file
// (deleted first when remove is set), and runs it.
func (b *testBundle) restart(t testing.TB, remove bool) {
	t.Helper()
	b.stop()
	if err := b.idx.Close(); err != nil {
		t.Fatal(err)
	}
	if remove {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(b.path + suffix); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	}
	b.open(t)
	b.run(t)
}

// testLogger logs to stderr when JETMAIL_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("JETMAIL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// publish stores result events as a worker would and returns the stream
// sequence of the last.
func (b *testBundle) publish(t testing.TB, events ...schema.Result) uint64 {
	t.Helper()
	var seq uint64
	for _, r := range events {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := b.js.Publish(t.Context(), b.names.ResultSubject(r.Id), data)
		if err != nil {
			t.Fatalf("publish %s %s: %v", r.Id, r.State, err)
		}
		seq = ack.Sequence
	}
	return seq
}

// publishSync publishes events and waits until the index has them.
func (b *testBundle) publishSync(t testing.TB, events ...schema.Result) uint64 {
	t.Helper()
	seq := b.publish(t, events...)
	b.wait(t, seq)
	return seq
}

// wait waits up to 20 s until the index has indexed seq.
func (b *testBundle) wait(t testing.TB, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := b.idx.WaitSeq(ctx, seq); err != nil {
		t.Fatal(err)
	}
}

// search runs q and fails the test on an error.
func (b *testBundle) search(t testing.TB, q Query) Page {
	t.Helper()
	p, err := b.idx.Search(t.Context(), q)
	if err != nil {
		t.Fatalf("Search(%+v): %v", q, err)
	}
	return p
}

// all follows the pages of q to the end and returns the events.
func (b *testBundle) all(t testing.TB, q Query) []schema.Result {
	t.Helper()
	var out []schema.Result
	for range 10000 {
		p := b.search(t, q)
		out = append(out, decodeAll(t, p.Messages)...)
		if p.Next == "" {
			return out
		}
		q.Cursor = p.Next
	}
	t.Fatal("more than 10000 pages")
	return nil
}

// ids returns the Ids of events.
func ids(events []schema.Result) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Id
	}
	return out
}

func decodeAll(t testing.TB, raw []json.RawMessage) []schema.Result {
	t.Helper()
	out := make([]schema.Result, len(raw))
	for i, m := range raw {
		if err := json.Unmarshal(m, &out[i]); err != nil {
			t.Fatalf("event %d is not a result: %v: %s", i, err, m)
		}
	}
	return out
}

// base is the time of the first test event.
var base = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

// msg describes a test message; events builds its events.
type msg struct {
	id      string
	at      int // seconds after base of its first event
	to, bcc []string
	subject string
	lane    schema.Lane
	batch   string
}

// accepted is the message's accepted event, with its envelope.
func (m msg) accepted() schema.Result {
	return schema.Result{
		Id: m.id, Status: schema.Status202, State: schema.StateAccepted, Attempt: 1,
		Lane: m.lane, BatchId: m.batch,
		Envelope: &schema.Envelope{From: "shop@example.com", Recipients: append(append([]string(nil), m.to...), m.bcc...), Subject: m.subject},
		Time:     base.Add(time.Duration(m.at) * time.Second),
	}
}

// then is a later event of the message, without envelope, d seconds
// after its first.
func (m msg) then(state schema.State, d int) schema.Result {
	status := map[schema.State]schema.Status{
		schema.StateDeferred: schema.Status202, schema.StateSent: schema.Status200,
		schema.StateFailed: schema.Status500, schema.StateCancelled: schema.Status410,
	}[state]
	return schema.Result{
		Id: m.id, Status: status, State: state, Attempt: 1, Lane: m.lane, BatchId: m.batch,
		MessageId: fmt.Sprintf("<%s@jetmail>", m.id),
		Time:      base.Add(time.Duration(m.at+d) * time.Second),
	}
}
