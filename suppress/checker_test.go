package suppress_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// TestCheckerWatch: a checker loads what is there, then sees the adds,
// replacements and removals that another connection makes.
func TestCheckerWatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "before@example.com", suppress.Manual, 0)
	c := checker(t, b.store)
	if !c.Ready() || c.Len() != 1 {
		t.Fatalf("Ready %v, Len %d after loading one entry", c.Ready(), c.Len())
	}
	if e, ok := c.Check("Before@Example.com", schema.LaneNormal, false); !ok || e.Address != "before@example.com" || e.Reason != suppress.Manual {
		t.Errorf("Check of the loaded entry: %+v, %v", e, ok)
	}

	_, js2 := b.srv.Connect(t)
	other := b.open(t, js2)
	is := func(addr string, want bool) func() bool {
		return func() bool { _, ok := c.Check(addr, schema.LaneNormal, false); return ok == want }
	}
	add(t, other, "new@example.com", suppress.Bounce, 0)
	waitChecker(t, c, 10*time.Second, "an add", is("new@example.com", true))
	add(t, other, "new@example.com", suppress.Unsubscribe, 0)
	waitChecker(t, c, 10*time.Second, "a replacement", is("new@example.com", false)) // unsubscribe: not on the normal lane
	if _, err := other.Remove(t.Context(), "before@example.com"); err != nil {
		t.Fatal(err)
	}
	waitChecker(t, c, 10*time.Second, "a removal", is("before@example.com", false))
	if c.Len() != 1 {
		t.Errorf("Len %d, want 1", c.Len())
	}
	// A value that is not an entry takes the key's entry away, and the
	// checker goes on.
	kv, _ := js2.KeyValue(t.Context(), other.Bucket())
	if _, err := kv.Put(t.Context(), "addr.new.example.com", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "not-a-key", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	add(t, other, "after@example.com", suppress.Manual, 0)
	waitChecker(t, c, 10*time.Second, "the junk and an add", func() bool {
		_, ok := c.Check("after@example.com", schema.LaneNormal, false)
		return ok && c.Len() == 1
	})

	if err := c.Run(t.Context()); err == nil {
		t.Error("a second Run did not fail")
	}
}

// TestCheckerEndsWithConnection: Run returns an error when the connection
// closes, and nil when its context ends.
func TestCheckerEndsWithConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	nc, js := b.srv.Connect(t)
	s := b.open(t, js)
	c, err := suppress.NewChecker(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run returned nil after the connection closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the connection closed")
	}

	// WaitReady gives up with its context.
	c2, err := suppress.NewChecker(t.Context(), b.store)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if err := c2.WaitReady(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitReady with a cancelled context: %v", err)
	}
	if c2.Ready() {
		t.Error("ready without Run")
	}
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if err := c2.Run(ctx); err != nil {
		t.Errorf("Run with a cancelled context: %v", err)
	}
	if _, err := suppress.NewChecker(t.Context(), s); err == nil {
		t.Error("NewChecker on a closed connection did not fail")
	}
}

// TestScope: bounce and manual entries apply to every message;
// unsubscribe entries to the bulk lane and to messages with Unsubscribe;
// @domain entries to the domain and its subdomains.
func TestScope(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "bounce@example.com", suppress.Bounce, 0)
	add(t, b.store, "manual@example.com", suppress.Manual, 0)
	add(t, b.store, "unsub@example.com", suppress.Unsubscribe, 0)
	add(t, b.store, "@blocked.example", suppress.Manual, 0)
	add(t, b.store, "@unsub.example", suppress.Unsubscribe, 0)
	add(t, b.store, "unsub@blocked.example", suppress.Unsubscribe, 0) // its domain's manual entry applies
	c := checker(t, b.store)
	lanes := []schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk, ""}
	for _, tc := range []struct {
		addr, entry string
		unsubOnly   bool   // applies to bulk and Unsubscribe messages only
		unsubEntry  string // the entry found for those, when it differs
	}{
		{"bounce@example.com", "bounce@example.com", false, ""},
		{"MANUAL@example.com", "manual@example.com", false, ""},
		{"unsub@example.com", "unsub@example.com", true, ""},
		{"x@blocked.example", "@blocked.example", false, ""},
		{"x@deep.sub.blocked.example", "@blocked.example", false, ""},
		{"unsub@blocked.example", "@blocked.example", false, "unsub@blocked.example"}, // its own first
		{"x@unsub.example", "@unsub.example", true, ""},
		{"x@mail.unsub.example", "@unsub.example", true, ""},
		{"x@example.com", "", false, ""},
		{"x@notblocked.example", "", false, ""},
		{"x@blocked.example.org", "", false, ""},
		{"blocked.example", "", false, ""},
	} {
		for _, lane := range lanes {
			for _, unsubMsg := range []bool{false, true} {
				listMsg := lane == schema.LaneBulk || unsubMsg
				want, entry := tc.entry != "" && (!tc.unsubOnly || listMsg), tc.entry
				if listMsg && tc.unsubEntry != "" {
					entry = tc.unsubEntry
				}
				e, ok := c.Check(tc.addr, lane, unsubMsg)
				if ok != want || (ok && e.Address != entry) {
					t.Errorf("Check(%q, %q, unsubscribe %v) = %s, %v; want %v (%s)", tc.addr, lane, unsubMsg, e.Address, ok, want, entry)
				}
			}
		}
	}
	// A display name is taken too, off the hot path.
	if _, ok := c.Check("Jan <Manual@Example.com>", schema.LaneNormal, false); !ok {
		t.Error("Check with a display name")
	}
}

// TestSkip: one call per message; IgnoreSuppression sends to all.
func TestSkip(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "gone@example.com", suppress.Bounce, 0)
	add(t, b.store, "unsub@example.com", suppress.Unsubscribe, 0)
	c := checker(t, b.store)
	rcpts := []string{"a@example.com", "Gone@example.com", "unsub@example.com", "b@example.com"}
	req := &schema.Request{}
	keep, skipped := c.Skip(req, schema.LaneNormal, rcpts)
	if diff := cmp.Diff([]string{"a@example.com", "unsub@example.com", "b@example.com"}, keep); diff != "" {
		t.Errorf("normal lane: kept (-want +got):\n%s", diff)
	}
	if len(skipped) != 1 || skipped[0].Index != 1 || skipped[0].Address != "Gone@example.com" || skipped[0].Entry.Reason != suppress.Bounce {
		t.Errorf("normal lane: skipped %+v", skipped)
	}
	for _, c2 := range []struct {
		req  *schema.Request
		lane schema.Lane
	}{
		{&schema.Request{}, schema.LaneBulk},
		{&schema.Request{Unsubscribe: schema.Unsubscribe{OneClick: true}}, schema.LaneNormal},
		{&schema.Request{Unsubscribe: schema.Unsubscribe{URL: "mailto:u@example.com"}}, schema.LaneUrgent},
	} {
		keep, skipped := c.Skip(c2.req, c2.lane, rcpts)
		if diff := cmp.Diff([]string{"a@example.com", "b@example.com"}, keep); diff != "" || len(skipped) != 2 || skipped[1].Index != 2 {
			t.Errorf("%s lane, Unsubscribe %+v: kept %v, skipped %+v", c2.lane, c2.req.Unsubscribe, keep, skipped)
		}
	}
	keep, skipped = c.Skip(&schema.Request{IgnoreSuppression: true, Unsubscribe: schema.Unsubscribe{OneClick: true}}, schema.LaneBulk, rcpts)
	if len(skipped) != 0 || &keep[0] != &rcpts[0] {
		t.Errorf("IgnoreSuppression: kept %v, skipped %+v", keep, skipped)
	}
	// Nothing skipped: the same slice, no allocation.
	clean := []string{"a@example.com", "b@example.com"}
	if keep, _ := c.Skip(req, schema.LaneBulk, clean); &keep[0] != &clean[0] {
		t.Error("Skip copied a list it skipped nothing of")
	}
	if keep, skipped := c.Skip(nil, schema.LaneNormal, rcpts); len(keep) != 3 || len(skipped) != 1 {
		t.Errorf("nil request: %v, %+v", keep, skipped)
	}
}

// TestSkipAllocs: checking a message with no suppressed recipient, or one
// address, allocates nothing when the addresses are lower-case ASCII (not
// parallel: AllocsPerRun).
func TestSkipAllocs(t *testing.T) {
	b := setup(t)
	add(t, b.store, "gone@example.com", suppress.Bounce, 0)
	add(t, b.store, "@example.org", suppress.Manual, 0)
	c := checker(t, b.store)
	req := &schema.Request{}
	clean := []string{"a@example.com", "b@sub.example.net", "c@example.com"}
	if n := testing.AllocsPerRun(100, func() { c.Skip(req, schema.LaneBulk, clean) }); n != 0 {
		t.Errorf("Skip of a clean message allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { c.Check("x@mail.example.org", schema.LaneNormal, false) }); n != 0 {
		t.Errorf("Check allocates %v times", n)
	}
}

// TestCheckerSurvivesRestart: after the NATS server restarts, the checker
// still has the list, and catches up with what changed since: once the
// client's ordered consumer misses its heartbeats and recreates itself,
// some 20 s (bounded wait, on the checker's change events).
func TestCheckerSurvivesRestart(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "before@example.com", suppress.Manual, 0)
	c := checker(t, b.store)
	b.srv.Restart()
	if _, ok := c.Check("before@example.com", schema.LaneNormal, false); !ok {
		t.Error("the checker lost an entry in the restart")
	}
	start := time.Now()
	_, js2 := b.srv.Connect(t)
	other := b.open(t, js2)
	add(t, other, "after@example.com", suppress.Manual, 0)
	if _, err := other.Remove(t.Context(), "before@example.com"); err != nil {
		t.Fatal(err)
	}
	waitChecker(t, c, 60*time.Second, "the changes after the restart", func() bool {
		_, after := c.Check("after@example.com", schema.LaneNormal, false)
		_, before := c.Check("before@example.com", schema.LaneNormal, false)
		return after && !before
	})
	t.Logf("caught up %s after the restart", time.Since(start).Round(time.Millisecond))
}
