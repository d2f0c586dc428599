package search

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
)

// fixture is a small set of messages that every filter tells apart.
var fixture = []msg{
	{id: "m1", at: 1, to: []string{"Jan@Example.com"}, subject: "Zażółć gęślą jaźń", lane: schema.LaneNormal, batch: "b1"},
	{id: "m2", at: 2, to: []string{"ola@example.com"}, bcc: []string{"audit@example.org"}, subject: "Invoice 2026/11", lane: schema.LaneBulk, batch: "b1"},
	{id: "m3", at: 3, to: []string{"jan@example.com", "ola@example.com"}, subject: "Your INVOICE is ready", lane: schema.LaneUrgent},
	{id: "m4", at: 4, to: []string{"piotr@example.com"}, subject: "", lane: schema.LaneBulk, batch: "b2"},
	{id: "m5", at: 5, to: []string{"jan@example.com"}, subject: "Reset your password", lane: schema.LaneUrgent},
}

// publishFixture publishes the fixture's events, interleaved as a worker
// would publish them: m1 sent, m2 failed, m3 deferred, m4 sent, m5
// accepted; and a v1 message m0 without envelope or lane. It returns the
// last sequence.
func publishFixture(t testing.TB, b *testBundle) uint64 {
	t.Helper()
	f := fixture
	v1 := schema.Result{Id: "m0", Status: schema.Status200, State: schema.StateSent, Attempt: 1, Time: base}
	return b.publishSync(t,
		v1,
		f[0].accepted(), f[1].accepted(), f[0].then(schema.StateSent, 10),
		f[2].accepted(), f[3].accepted(), f[1].then(schema.StateDeferred, 10),
		f[2].then(schema.StateDeferred, 20), f[1].then(schema.StateFailed, 30),
		f[3].then(schema.StateSent, 5), f[4].accepted(),
	)
}

func TestSearchFilters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	publishFixture(t, b)

	for _, c := range []struct {
		name string
		q    Query
		want []string
	}{
		{"everything, newest first", Query{}, []string{"m5", "m4", "m3", "m2", "m1", "m0"}},
		{"recipient in any case", Query{Recipient: "JAN@example.COM"}, []string{"m5", "m3", "m1"}},
		{"recipient with spaces", Query{Recipient: "  ola@example.com "}, []string{"m3", "m2"}},
		{"Bcc recipient", Query{Recipient: "audit@example.org"}, []string{"m2"}},
		{"recipient is an address, not a substring", Query{Recipient: "example.com"}, nil},
		{"unknown recipient", Query{Recipient: "nobody@example.com"}, nil},
		{"subject substring in any case", Query{Subject: "invoice"}, []string{"m3", "m2"}},
		{"subject in Polish, other case", Query{Subject: "GĘŚLĄ"}, []string{"m1"}},
		{"latest state", Query{State: "sent"}, []string{"m4", "m1", "m0"}},
		{"state in any case", Query{State: "Deferred"}, []string{"m3"}},
		{"state failed", Query{State: "failed"}, []string{"m2"}},
		{"state accepted", Query{State: "accepted"}, []string{"m5"}},
		{"lane", Query{Lane: "urgent"}, []string{"m5", "m3"}},
		{"lane in any case", Query{Lane: "BULK"}, []string{"m4", "m2"}},
		{"batch", Query{Batch: "b1"}, []string{"m2", "m1"}},
		{"recipient and state", Query{Recipient: "jan@example.com", State: "sent"}, []string{"m1"}},
		{"recipient and lane", Query{Recipient: "jan@example.com", Lane: "urgent"}, []string{"m5", "m3"}},
		{"recipient and subject", Query{Recipient: "ola@example.com", Subject: "invoice 2026"}, []string{"m2"}},
		{"batch and state", Query{Batch: "b1", State: "failed"}, []string{"m2"}},
		{"lane, state and subject", Query{Lane: "urgent", State: "accepted", Subject: "password"}, []string{"m5"}},
		{"nothing matches all", Query{Batch: "b2", State: "failed"}, nil},
		{"since", Query{Since: base.Add(3 * time.Second)}, []string{"m5", "m4", "m3"}},
		{"until", Query{Until: base.Add(3 * time.Second)}, []string{"m2", "m1", "m0"}},
		{"since and until with recipient", Query{Recipient: "jan@example.com", Since: base.Add(2 * time.Second), Until: base.Add(5 * time.Second)}, []string{"m3"}},
	} {
		got := ids(b.all(t, c.q))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %+v found %v, want %v", c.name, c.q, got, c.want)
		}
	}

	// The answer is the latest event as stored, with the envelope of the
	// accepted event beside it.
	p := b.search(t, Query{Recipient: "audit@example.org"})
	stored, err := b.results.GetLastMsgForSubject(t.Context(), "mail.result.m2")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 1 || !bytes.Equal(p.Messages[0], stored.Data) {
		t.Errorf("answer %s\nwant the stored event %s", p.Messages, stored.Data)
	}
	var env schema.Envelope
	if err := json.Unmarshal(p.Envelopes["m2"], &env); err != nil {
		t.Fatalf("envelope of m2: %v: %s", err, p.Envelopes["m2"])
	}
	if want := *fixture[1].accepted().Envelope; !cmp.Equal(env, want) {
		t.Errorf("envelope (-want +got):\n%s", cmp.Diff(want, env))
	}
	// The v1 message has no envelope.
	p = b.search(t, Query{State: "sent"})
	if _, ok := p.Envelopes["m0"]; ok || len(p.Envelopes) != 2 {
		t.Errorf("envelopes %v, want those of m4 and m1", p.Envelopes)
	}
}

// TestSearchEventBeforeEnvelope: an event seen before the accepted one
// (a deferred event of a worker that published out of order) is indexed by
// Id and state; the envelope that comes later makes the message findable by
// recipient, and keeps its place in the order.
func TestSearchEventBeforeEnvelope(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := msg{id: "early", at: 1, to: []string{"x@example.com"}, subject: "hello", lane: schema.LaneNormal}
	b.publishSync(t, m.then(schema.StateDeferred, 0))
	if got := ids(b.all(t, Query{State: "deferred"})); !slices.Equal(got, []string{"early"}) {
		t.Fatalf("found %v before the envelope", got)
	}
	if got := ids(b.all(t, Query{Recipient: "x@example.com"})); len(got) != 0 {
		t.Fatalf("found %v by recipient without an envelope", got)
	}
	later := msg{id: "later", at: 2, to: []string{"x@example.com"}}
	acc := m.accepted()
	acc.Time = base.Add(10 * time.Second)
	b.publishSync(t, later.accepted(), acc)
	if got := ids(b.all(t, Query{Recipient: "X@example.com"})); !slices.Equal(got, []string{"later", "early"}) {
		t.Errorf("by recipient: %v, want later, early (early keeps the time of its first event)", got)
	}
	if got := b.all(t, Query{Subject: "hell"}); len(got) != 1 || got[0].State != schema.StateAccepted {
		t.Errorf("by subject: %+v, want the accepted event of early", got)
	}

	// A second accepted event with other recipients replaces the first's.
	again := m.accepted()
	again.Envelope.Recipients = []string{"y@example.com"}
	b.publishSync(t, again)
	if got := ids(b.all(t, Query{Recipient: "x@example.com"})); !slices.Equal(got, []string{"later"}) {
		t.Errorf("old recipient: %v, want only later", got)
	}
	if got := ids(b.all(t, Query{Recipient: "y@example.com"})); !slices.Equal(got, []string{"early"}) {
		t.Errorf("new recipient: %v, want early", got)
	}
}

// TestSearchPaging pages through messages with a small limit while
// messages keep arriving and existing ones get new events: no message
// appears twice, and every message that existed before the first page
// appears once, in order.
func TestSearchPaging(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const n = 230
	var before []schema.Result
	var msgs []msg
	for i := range n {
		m := msg{id: fmt.Sprintf("p%03d", i), at: i, to: []string{"pager@example.com"}, subject: "page", lane: schema.LaneBulk}
		msgs = append(msgs, m)
		before = append(before, m.accepted())
	}
	b.publishSync(t, before...)

	// Events keep arriving while we page: new messages (newer than all),
	// and final events of the existing ones.
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	published := 0
	wg.Go(func() {
		for i := 0; ctx.Err() == nil && i < 2*n; i++ {
			var r schema.Result
			if i%2 == 0 {
				r = msgs[(i/2*7)%n].then(schema.StateSent, 1000)
			} else {
				r = msg{id: fmt.Sprintf("new%03d", i), at: 5000 + i, to: []string{"pager@example.com"}}.accepted()
			}
			data, _ := json.Marshal(r)
			if _, err := b.js.Publish(ctx, b.names.ResultSubject(r.Id), data); err != nil {
				return
			}
			published++
		}
	})
	for _, q := range []Query{{Limit: 7}, {Limit: 7, Recipient: "PAGER@example.com"}, {Limit: 1, Lane: "bulk"}} {
		seen := map[string]int{}
		var order []string
		pages := 0
		for {
			p := b.search(t, q)
			pages++
			for _, r := range decodeAll(t, p.Messages) {
				seen[r.Id]++
				order = append(order, r.Id)
			}
			if p.Next == "" {
				break
			}
			q.Cursor = p.Next
			if q.Limit > 0 && len(p.Messages) != q.Limit {
				t.Fatalf("%+v: a page of %d before the last", q, len(p.Messages))
			}
		}
		var old []string
		for _, id := range order {
			if seen[id] != 1 {
				t.Errorf("%+v: %s seen %d times", q, id, seen[id])
			}
			if strings.HasPrefix(id, "p") {
				old = append(old, id)
			}
		}
		var want []string
		for i := n - 1; i >= 0; i-- {
			want = append(want, msgs[i].id)
		}
		if !slices.Equal(old, want) {
			t.Errorf("%+v: the messages of before, in %d pages:\n got %v\nwant %v", q, pages, old, want)
		}
	}
	cancel()
	wg.Wait()
	if published == 0 {
		t.Fatal("nothing was published while paging: the test proves nothing")
	}
	t.Logf("%d events published while paging", published)
}

// TestSearchRebuild deletes the index file and opens it again: rebuilt
// from the stream, it gives the same answers.
func TestSearchRebuild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	last := publishFixture(t, b)
	queries := []Query{{}, {Recipient: "jan@example.com"}, {Subject: "invoice"}, {State: "sent"}, {Lane: "bulk"}, {Batch: "b1"}, {Limit: 2}}
	var want []Page
	for _, q := range queries {
		want = append(want, b.search(t, q))
	}
	b.restart(t, true)
	if got := b.idx.Seq(); got != 0 {
		t.Fatalf("a new index file starts at %d, want 0", got)
	}
	b.wait(t, last)
	for i, q := range queries {
		if diff := cmp.Diff(want[i], b.search(t, q)); diff != "" {
			t.Errorf("%+v after a rebuild (-before +after):\n%s", q, diff)
		}
	}
	if n := b.idx.applied.Load(); n != int64(last) {
		t.Errorf("the rebuild indexed %d events, want all %d", n, last)
	}
}

// TestSearchResume: an index opened again goes on from the stored
// sequence, and reads only the events after it, even across a NATS
// server restart.
func TestSearchResume(t *testing.T) {
	t.Parallel()
	b := setup(t)
	last := publishFixture(t, b)
	if n := b.idx.applied.Load(); n != int64(last) {
		t.Fatalf("indexed %d events, want %d", n, last)
	}
	b.stop()
	b.srv.Restart()
	b.restart(t, false)
	if got := b.idx.Seq(); got != last {
		t.Fatalf("reopened at sequence %d, want the stored %d", got, last)
	}
	extra := msg{id: "m6", at: 6, to: []string{"jan@example.com"}}
	seq := b.publishSync(t, extra.accepted(), extra.then(schema.StateSent, 1))
	if n := b.idx.applied.Load(); n != 2 {
		t.Errorf("after the restart the index read %d events, want the 2 new ones", n)
	}
	if seq != last+2 {
		t.Fatalf("sequence %d, want %d", seq, last+2)
	}
	if got := ids(b.all(t, Query{Recipient: "jan@example.com"})); !slices.Equal(got, []string{"m6", "m5", "m3", "m1"}) {
		t.Errorf("found %v", got)
	}
}

// TestSearchStreamReplaced: when the result stream is deleted and created
// again, the index empties itself and indexes the new stream.
func TestSearchStreamReplaced(t *testing.T) {
	t.Parallel()
	b := setup(t)
	publishFixture(t, b)
	b.stop()
	if err := b.js.DeleteStream(t.Context(), b.names.ResultStream); err != nil {
		t.Fatal(err)
	}
	jstest.EnsureStreams(t, b.js, b.names)
	b.run(t)
	b.waitOnly(t, msg{id: "fresh", at: 1, to: []string{"jan@example.com"}}.accepted())

	// And while Run is running.
	if err := b.js.DeleteStream(t.Context(), b.names.ResultStream); err != nil {
		t.Fatal(err)
	}
	jstest.EnsureStreams(t, b.js, b.names)
	b.waitOnly(t, msg{id: "fresher", at: 1, to: []string{"jan@example.com"}}.accepted())
}

// waitOnly publishes ev, the first event of a new stream, and waits until
// the index holds it and nothing else. (WaitSeq can not tell: the index
// may not have seen yet that the stream is new.)
func (b *testBundle) waitOnly(t *testing.T, ev schema.Result) {
	t.Helper()
	seq := b.publish(t, ev)
	if seq != 1 {
		t.Fatalf("%s stored at %d, want 1 in a new stream", ev.Id, seq)
	}
	var got []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		got = ids(b.all(t, Query{}))
		if b.idx.Seq() == seq && slices.Equal(got, []string{ev.Id}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stream was replaced the index has %v at sequence %d, want only %s at 1", got, b.idx.Seq(), ev.Id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSearchSkipAhead: a stream purged while the index was stopped (its
// first sequence beyond the index's) leaves only what the stream still
// has, and the index goes on from the stream's first event.
func TestSearchSkipAhead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	last := publishFixture(t, b)
	b.stop()
	if err := b.results.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	m := msg{id: "after-purge", at: 9, to: []string{"jan@example.com"}}
	b.publish(t, m.accepted())
	b.run(t)
	b.wait(t, last+1)
	if got := ids(b.all(t, Query{})); !slices.Equal(got, []string{"after-purge"}) {
		t.Errorf("after a purge: %v, want only after-purge", got)
	}
	if n := b.idx.applied.Load(); n != int64(last)+1 {
		t.Errorf("indexed %d events in all, want %d: the purged ones once, the new one once", n, last+1)
	}
}

// TestSearchPrune: messages whose events expire from the stream (here
// after a max age of 1 s) leave the index; a message with a newer event
// stays.
func TestSearchPrune(t *testing.T) {
	t.Parallel()
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	names := schema.DefaultNames()
	cfg := config.Streams{Names: names}.ResultStream()
	cfg.MaxAge, cfg.Duplicates = time.Second, 100*time.Millisecond
	if _, err := js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	b := &testBundle{srv: srv, js: js, names: names, path: t.TempDir() + "/search.db"}
	b.open(t)
	b.run(t)
	old := msg{id: "old", at: 1, to: []string{"jan@example.com"}}
	kept := msg{id: "kept", at: 2, to: []string{"jan@example.com"}}
	b.publishSync(t, old.accepted(), kept.accepted())
	if got := ids(b.all(t, Query{Recipient: "jan@example.com"})); len(got) != 2 {
		t.Fatalf("found %v, want both", got)
	}
	// kept gets an event every 200 ms, so it always has one in the stream.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b.publishSync(t, kept.then(schema.StateDeferred, 1))
		got := ids(b.all(t, Query{Recipient: "jan@example.com"}))
		if slices.Equal(got, []string{"kept"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old not pruned 20 s after its events expired: %v", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var n int
	if err := b.idx.rdb.QueryRow(`SELECT count(*) FROM recipients`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d recipient rows (%v), want the one of kept", n, err)
	}
}

func TestSearchBadQuery(t *testing.T) {
	t.Parallel()
	b := setup(t)
	publishFixture(t, b)
	p := b.search(t, Query{Limit: 1})
	for _, c := range []struct {
		q     Query
		field string
	}{
		{Query{State: "delivered"}, "state"},
		{Query{Lane: "fast"}, "lane"},
		{Query{Batch: "a.b"}, "batch"},
		{Query{Limit: -1}, "limit"},
		{Query{Limit: MaxLimit + 1}, "limit"},
		{Query{Since: base, Until: base}, "until"},
		{Query{Cursor: "not-a-cursor"}, "cursor"},
		{Query{Cursor: p.Next + "A"}, "cursor"},
		{Query{Cursor: p.Next[:len(p.Next)-1]}, "cursor"},
		{Query{Cursor: "AQ"}, "cursor"},
	} {
		_, err := b.idx.Search(t.Context(), c.q)
		var qe *QueryError
		if !errors.Is(err, ErrBadQuery) || !errors.As(err, &qe) || qe.Field != c.field {
			t.Errorf("Search(%+v): %v, want a QueryError for %s", c.q, err, c.field)
		}
	}
	if p := b.search(t, Query{Limit: MaxLimit}); len(p.Messages) != 6 || p.Next != "" {
		t.Errorf("limit %d: %d messages, next %q", MaxLimit, len(p.Messages), p.Next)
	}
	if p := b.search(t, Query{}); len(p.Messages) != 6 {
		t.Errorf("default limit: %d messages", len(p.Messages))
	}
}

// TestSearchDefaultLimit: without Limit a page has 50 messages.
func TestSearchDefaultLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var events []schema.Result
	for i := range DefaultLimit + 1 {
		events = append(events, msg{id: fmt.Sprintf("d%02d", i), at: i, to: []string{"a@example.com"}}.accepted())
	}
	b.publishSync(t, events...)
	p := b.search(t, Query{})
	if len(p.Messages) != DefaultLimit || p.Next == "" {
		t.Fatalf("%d messages, next %q; want %d and a next page", len(p.Messages), p.Next, DefaultLimit)
	}
	p = b.search(t, Query{Cursor: p.Next})
	if got := ids(decodeAll(t, p.Messages)); !slices.Equal(got, []string{"d00"}) || p.Next != "" {
		t.Errorf("second page %v, next %q", got, p.Next)
	}
}

// TestSearchPlans checks that the searches read an index in order, rather
// than sorting the matches: what makes a search by recipient fast however
// many messages the index holds.
func TestSearchPlans(t *testing.T) {
	t.Parallel()
	b := setup(t)
	publishFixture(t, b)
	cur := cursor{t0: base.UnixNano(), rowid: 3}.String()
	for _, c := range []struct {
		q    Query
		want string
	}{
		{Query{Recipient: "jan@example.com", Cursor: cur}, "SEARCH r USING PRIMARY KEY (addr=? AND"},
		{Query{Recipient: "jan@example.com", State: "sent", Since: base}, "SEARCH r USING PRIMARY KEY (addr=? AND"},
		{Query{Cursor: cur}, "messages_t0"},
		{Query{Subject: "x", Since: base}, "SEARCH s USING PRIMARY KEY (t0>?)"},
		{Query{Subject: "x", State: "sent", Cursor: cur}, "SEARCH s USING PRIMARY KEY ((t0,msg)<(?,?))"},
		{Query{Subject: "x", Recipient: "jan@example.com"}, "SEARCH r USING PRIMARY KEY (addr=?)"},
		{Query{State: "failed", Cursor: cur}, "messages_state (state=? AND"},
		{Query{Batch: "b1"}, "messages_batch (batch=?)"},
		{Query{Lane: "bulk", Cursor: cur}, "messages_lane (lane=? AND"},
	} {
		plan, err := b.idx.explain(t.Context(), c.q)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(plan, c.want) || strings.Contains(plan, "TEMP B-TREE") {
			t.Errorf("%+v: plan\n%s\nwant %q and no sorting", c.q, plan, c.want)
		}
	}
}

// TestRunErrors: Run waits for a stream that does not exist yet, and
// refuses to run twice at once.
func TestRunErrors(t *testing.T) {
	t.Parallel()
	srv := jstest.Start(t)
	_, js := srv.Connect(t)
	names := schema.DefaultNames()
	b := &testBundle{srv: srv, js: js, names: names, path: t.TempDir() + "/search.db"}
	b.open(t)
	b.run(t) // no stream yet
	jstest.Eventually(t, 5*time.Second, b.idx.running.Load)
	if err := b.idx.Run(t.Context(), js, names); err == nil {
		t.Error("a second Run of the same index did not fail")
	}
	jstest.EnsureStreams(t, js, names)
	b.publishSync(t, fixture[0].accepted())
	if got := ids(b.all(t, Query{})); !slices.Equal(got, []string{"m1"}) {
		t.Errorf("found %v", got)
	}
}

// TestOpenInUse: one index file has one writer; Close lets another open
// it.
func TestOpenInUse(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/search.db"
	idx, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if other, err := Open(path, nil); !errors.Is(err, ErrInUse) {
		if other != nil {
			other.Close()
		}
		t.Fatalf("a second Open: %v, want ErrInUse", err)
	}
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	idx, err = Open(path, nil)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	idx.Close()
}
