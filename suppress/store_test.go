package suppress_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// TestOpen: the bucket is created as config defines it; opening it again,
// from a client (Replicas 0) or a worker (Replicas 1), is harmless; a
// bucket made without per-key TTLs is brought to the definition.
func TestOpen(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	for _, r := range []int{0, 1, 0} {
		if _, err := suppress.Open(ctx, b.js, schema.Names{}, suppress.Options{Replicas: r}); err != nil {
			t.Fatalf("Open again with Replicas %d: %v", r, err)
		}
	}
	kv, err := b.js.KeyValue(ctx, "JETMAIL_SUPPRESSIONS")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := config.DefaultStreams().SuppressionBucket()
	got := st.Config()
	if got.Bucket != want.Bucket || got.History != 1 || got.LimitMarkerTTL != time.Hour || got.Replicas != 1 ||
		got.Storage != jetstream.FileStorage || got.Description != want.Description {
		t.Errorf("bucket config %+v, want %+v", got, want)
	}
	if b.store.Bucket() != "JETMAIL_SUPPRESSIONS" {
		t.Errorf("Bucket() = %q", b.store.Bucket())
	}

	// A bucket of another name, made by hand without LimitMarkerTTL.
	names := schema.Names{Suppressions: "OLD_SUPPRESSIONS"}
	if _, err := b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "OLD_SUPPRESSIONS"}); err != nil {
		t.Fatal(err)
	}
	old, err := suppress.Open(ctx, b.js, names, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Add(ctx, suppress.Entry{Address: "a@example.com", Reason: suppress.Bounce}, time.Hour); err != nil {
		t.Errorf("a bounce in a bucket brought to the definition: %v", err)
	}
}

func TestAddGetRemove(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	ch := add(t, b.store, "Jan Kowalski <Jan@Example.COM>", suppress.Manual, 0)
	want := suppress.Entry{Address: "jan@example.com", Reason: suppress.Manual, Time: b.clock.Now()}
	if diff := cmp.Diff(suppress.Change{Entry: want, Stored: true}, ch); diff != "" {
		t.Errorf("Add (-want +got):\n%s", diff)
	}
	for _, in := range []string{"jan@example.com", "JAN@example.com", `"jan"@EXAMPLE.com`} {
		got, err := b.store.Get(ctx, in)
		if err != nil || !cmp.Equal(got, want) {
			t.Errorf("Get(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if _, err := b.store.Get(ctx, "other@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Get of an address not listed: %v, want ErrNotFound", err)
	}
	// An Id and a Time are kept.
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ch, err := b.store.Add(ctx, suppress.Entry{Address: "b@example.com", Reason: suppress.Unsubscribe, Id: "msg-1", Time: at}, 0)
	if err != nil || ch.Entry.Id != "msg-1" || !ch.Entry.Time.Equal(at) || ch.Entry.Expires != nil {
		t.Errorf("Add with Id and Time: %+v, %v", ch, err)
	}

	removed, err := b.store.Remove(ctx, "JAN@example.com")
	if err != nil || !cmp.Equal(removed, want) {
		t.Errorf("Remove = %+v, %v; want %+v", removed, err, want)
	}
	if _, err := b.store.Get(ctx, "jan@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Get after Remove: %v, want ErrNotFound", err)
	}
	if _, err := b.store.Remove(ctx, "jan@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Remove again: %v, want ErrNotFound", err)
	}
	// Added again after the removal (over the purge marker).
	if ch := add(t, b.store, "jan@example.com", suppress.Bounce, 0); !ch.Stored || ch.Previous != nil {
		t.Errorf("Add after Remove: %+v", ch)
	}

	for _, c := range []struct {
		e    suppress.Entry
		want error
	}{
		{suppress.Entry{Address: "nope", Reason: suppress.Manual}, suppress.ErrInvalidAddress},
		{suppress.Entry{Address: "a@example.com", Reason: "spam"}, suppress.ErrInvalidReason},
		{suppress.Entry{Address: "a@example.com"}, suppress.ErrInvalidReason},
	} {
		if _, err := b.store.Add(ctx, c.e, 0); !errors.Is(err, c.want) {
			t.Errorf("Add(%+v): %v, want %v", c.e, err, c.want)
		}
	}
	if _, err := b.store.Add(ctx, suppress.Entry{Address: "a@example.com", Reason: suppress.Manual, Id: "a.b"}, 0); err == nil {
		t.Error("Add took an invalid Id")
	}
	for _, f := range []func() error{
		func() error { _, err := b.store.Get(ctx, "nope"); return err },
		func() error { _, err := b.store.Remove(ctx, "nope"); return err },
		func() error { _, err := b.store.Match(ctx, "nope"); return err },
	} {
		if err := f(); !errors.Is(err, suppress.ErrInvalidAddress) {
			t.Errorf("%v, want ErrInvalidAddress", err)
		}
	}
}

// TestPrecedence: manual beats unsubscribe beats bounce; a bounce renews a
// bounce; a manual entry over a bounce removes the expiry, on the server
// too (no Nats-TTL on the stored message).
func TestPrecedence(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	reasons := []suppress.Reason{suppress.Bounce, suppress.Unsubscribe, suppress.Manual}
	for i, old := range reasons {
		for j, next := range reasons {
			addr := string(old) + "-" + string(next) + "@example.com"
			first := add(t, b.store, addr, old, 0)
			b.clock.Add(time.Minute)
			ch := add(t, b.store, addr, next, 0)
			wantStored := j > i || (old == suppress.Bounce && next == suppress.Bounce)
			wantReason := old
			if wantStored {
				wantReason = next
			}
			if ch.Stored != wantStored || ch.Entry.Reason != wantReason || ch.Previous == nil || !cmp.Equal(*ch.Previous, first.Entry) {
				t.Errorf("%s then %s: %+v; want Stored %v, reason %s, Previous the first", old, next, ch, wantStored, wantReason)
			}
			got, err := b.store.Get(ctx, addr)
			if err != nil || !cmp.Equal(got, ch.Entry) {
				t.Errorf("%s then %s: Get = %+v, %v; want %+v", old, next, got, err, ch.Entry)
			}
			if old == suppress.Bounce && next == suppress.Bounce {
				// Renewed: 30 days from now.
				if want := b.clock.Now().Add(suppress.DefaultBounceTTL); got.Expires == nil || !got.Expires.Equal(want) {
					t.Errorf("renewed bounce expires %v, want %v", got.Expires, want)
				}
				if h := storedTTL(t, b.js, addr); h != "720h0m0s" {
					t.Errorf("renewed bounce: Nats-TTL %q, want 720h0m0s", h)
				}
			}
			ttlHeader := storedTTL(t, b.js, addr)
			if (wantReason == suppress.Bounce) != (got.Expires != nil) || (got.Expires != nil) != (ttlHeader != "") {
				t.Errorf("%s then %s: reason %s with Expires %v and Nats-TTL %q", old, next, wantReason, got.Expires, ttlHeader)
			}
		}
	}
}

// storedTTL is the Nats-TTL header of the message that holds address's
// entry in the bucket's stream.
func storedTTL(t *testing.T, js jetstream.JetStream, address string) string {
	t.Helper()
	st, err := js.Stream(t.Context(), "KV_JETMAIL_SUPPRESSIONS")
	if err != nil {
		t.Fatal(err)
	}
	key, err := suppress.EncodeKey(address)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), "$KV.JETMAIL_SUPPRESSIONS."+key)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get(jetstream.MsgTTLHeader)
}

// TestAddConcurrent: many writers of one address end with one entry, the
// strongest.
func TestAddConcurrent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, js2 := b.srv.Connect(t)
	other := b.open(t, js2)
	done := make(chan suppress.Change, 30)
	for i := range 30 {
		go func() {
			s, r := b.store, suppress.Bounce
			if i%2 == 1 {
				s = other
			}
			if i == 17 {
				r = suppress.Manual
			}
			ch, err := s.Add(context.Background(), suppress.Entry{Address: "race@example.com", Reason: r}, 0)
			if err != nil {
				t.Error(err)
			}
			done <- ch
		}()
	}
	manualStored := 0
	for range 30 {
		if ch := <-done; ch.Stored && ch.Entry.Reason == suppress.Manual {
			manualStored++
		}
	}
	got, err := b.store.Get(t.Context(), "race@example.com")
	if err != nil || got.Reason != suppress.Manual || got.Expires != nil || manualStored != 1 {
		t.Errorf("after the race: %+v, %v (manual stored %d times)", got, err, manualStored)
	}
}

// TestBounceExpiry: a bounce with a short TTL disappears from the bucket
// (the server deletes it) and from a Checker (the watch tells it).
func TestBounceExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The real clock: the server's expiry is what this tests.
	s, err := suppress.Open(t.Context(), b.js, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := checker(t, s)
	ch := add(t, s, "gone@example.com", suppress.Bounce, 1500*time.Millisecond)
	if got := ch.Entry.Expires.Sub(ch.Entry.Time); got != 2*time.Second {
		t.Errorf("Expires %s after Time, want 2s (the TTL in whole seconds)", got)
	}
	add(t, s, "stays@example.com", suppress.Manual, time.Second) // the TTL is for bounces only
	waitChecker(t, c, 10*time.Second, "the bounce", func() bool {
		_, ok := c.Check("gone@example.com", schema.LaneNormal, false)
		return ok
	})
	// Bounded wait, on the checker's change events: the server's TTL.
	waitChecker(t, c, 15*time.Second, "the bounce expire", func() bool {
		_, ok := c.Check("gone@example.com", schema.LaneNormal, false)
		return !ok && c.Len() == 1
	})
	kv, err := b.js.KeyValue(t.Context(), s.Bucket())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(t.Context(), "addr.gone.example.com"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the server kept the expired key: %v", err)
	}
	if _, err := s.Get(t.Context(), "gone@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Get of the expired bounce: %v", err)
	}
	if _, ok := c.Check("stays@example.com", schema.LaneNormal, false); !ok {
		t.Error("the manual entry expired too")
	}
}

// TestExpiryBeforeTheServer: once a bounce's Expires has passed, Get,
// Match, List and a Checker pass it over, though the server still holds
// it (its deletion late).
func TestExpiryBeforeTheServer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := checker(t, b.store)
	add(t, b.store, "late@example.com", suppress.Bounce, time.Hour)
	add(t, b.store, "@late.example", suppress.Bounce, time.Hour)
	waitChecker(t, c, 10*time.Second, "the bounces", func() bool { return c.Len() == 2 })
	if _, ok := c.Check("late@example.com", schema.LaneUrgent, false); !ok {
		t.Fatal("bounce not applied before it expires")
	}
	b.clock.Add(time.Hour)
	ctx := t.Context()
	if e, ok := c.Check("late@example.com", schema.LaneUrgent, false); ok {
		t.Errorf("Check applies an expired bounce: %+v", e)
	}
	if e, ok := c.Check("x@late.example", schema.LaneUrgent, false); ok {
		t.Errorf("Check applies an expired domain bounce: %+v", e)
	}
	if _, err := b.store.Get(ctx, "late@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Get: %v", err)
	}
	if _, err := b.store.Match(ctx, "x@late.example"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Match: %v", err)
	}
	if _, err := b.store.Remove(ctx, "late@example.com"); !errors.Is(err, suppress.ErrNotFound) {
		t.Errorf("Remove: %v", err)
	}
	if got := list(t, b.store); len(got) != 0 {
		t.Errorf("List: %+v", got)
	}
	kv, _ := b.js.KeyValue(ctx, b.store.Bucket())
	if _, err := kv.Get(ctx, "addr.late.example.com"); err != nil {
		t.Errorf("the server already deleted the key, so this test shows nothing: %v", err)
	}
	// An expired bounce is replaced like a missing one.
	if ch := add(t, b.store, "late@example.com", suppress.Bounce, 0); !ch.Stored || ch.Previous != nil {
		t.Errorf("Add over an expired bounce: %+v", ch)
	}
}

func list(t *testing.T, s *suppress.Store) []suppress.Entry {
	t.Helper()
	var out []suppress.Entry
	for e, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func TestList(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if got := list(t, b.store); len(got) != 0 {
		t.Fatalf("empty list: %+v", got)
	}
	var want []string
	for i, a := range []string{"c@example.com", "@example.org", "a@example.com", "b@example.com"} {
		add(t, b.store, a, []suppress.Reason{suppress.Manual, suppress.Bounce, suppress.Unsubscribe}[i%3], 0)
		want = append(want, a)
	}
	// Written last: rewritten entries move to the end.
	add(t, b.store, "c@example.com", suppress.Manual, 0) // kept: nothing written
	add(t, b.store, "@example.org", suppress.Manual, 0)
	want = append(slices.Delete(want, 1, 2), "@example.org")
	var got []string
	for _, e := range list(t, b.store) {
		got = append(got, e.Address)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List order (-want +got):\n%s", diff)
	}
	// A value that is not an entry is an error, and the listing goes on.
	kv, _ := b.js.KeyValue(t.Context(), b.store.Bucket())
	if _, err := kv.Put(t.Context(), "addr.junk.example.com", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	n, errs := 0, 0
	for _, err := range b.store.List(t.Context()) {
		if err != nil {
			errs++
			if !errors.Is(err, suppress.ErrMalformed) || !strings.Contains(err.Error(), "junk@example.com") {
				t.Errorf("error %v does not name the address", err)
			}
			continue
		}
		n++
	}
	if n != 4 || errs != 1 {
		t.Errorf("listed %d entries and %d errors, want 4 and 1", n, errs)
	}
	// Stopping early is fine.
	for range b.store.List(t.Context()) {
		break
	}
}

// TestMatch: an address's own entry, else the nearest domain's.
func TestMatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	add(t, b.store, "@example.com", suppress.Manual, 0)
	add(t, b.store, "@mail.example.com", suppress.Bounce, 0)
	add(t, b.store, "jan@mail.example.com", suppress.Unsubscribe, 0)
	for in, want := range map[string]string{
		"jan@mail.example.com":   "jan@mail.example.com",
		"ola@mail.example.com":   "@mail.example.com",
		"ola@a.mail.example.com": "@mail.example.com",
		"ola@example.com":        "@example.com",
		"ola@other.example.com":  "@example.com",
		"@x.example.com":         "@example.com",
		"@mail.example.com":      "@mail.example.com",
		"ola@example.community":  "",
		"ola@com":                "",
	} {
		e, err := b.store.Match(t.Context(), in)
		if want == "" {
			if !errors.Is(err, suppress.ErrNotFound) {
				t.Errorf("Match(%q) = %+v, %v; want ErrNotFound", in, e, err)
			}
			continue
		}
		if err != nil || e.Address != want {
			t.Errorf("Match(%q) = %+v, %v; want %s", in, e, err, want)
		}
	}
}

// TestUnsubscribe: the entry, and an event in the result stream, once.
func TestUnsubscribe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jstest.EnsureStreams(t, b.js, schema.Names{})
	ctx := t.Context()
	if _, _, err := b.store.Unsubscribe(ctx, "Jan@Example.com"); !errors.Is(err, suppress.ErrInvalidAddress) {
		t.Errorf("Unsubscribe of an address not canonical: %v", err)
	}
	ch, ev, err := b.store.Unsubscribe(ctx, "jan@example.com")
	if err != nil || !ch.Stored || ch.Entry.Reason != suppress.Unsubscribe || ev == nil {
		t.Fatalf("Unsubscribe: %+v, %+v, %v", ch, ev, err)
	}
	if ev.Address != "jan@example.com" || !schema.ValidID(ev.Id) || !ev.Time.Equal(b.clock.Now()) {
		t.Errorf("event %+v", ev)
	}
	got := readEvent(t, b.js, ev.Id)
	if !cmp.Equal(got, *ev) {
		t.Errorf("stored event %+v, want %+v", got, *ev)
	}
	// Again: no second event.
	if ch, ev, err := b.store.Unsubscribe(ctx, "jan@example.com"); err != nil || ch.Stored || ev != nil {
		t.Errorf("second Unsubscribe: %+v, %+v, %v", ch, ev, err)
	}
	// A bounce is replaced; a manual entry kept; both publish.
	add(t, b.store, "bounced@example.com", suppress.Bounce, 0)
	add(t, b.store, "blocked@example.com", suppress.Manual, 0)
	for addr, stored := range map[string]bool{"bounced@example.com": true, "blocked@example.com": false} {
		ch, ev, err := b.store.Unsubscribe(ctx, addr)
		if err != nil || ch.Stored != stored || ev == nil {
			t.Errorf("Unsubscribe(%s): %+v, %+v, %v", addr, ch, ev, err)
		}
	}
	// Without the result stream the entry is stored, and the error says
	// the event is missing.
	b2 := setup(t)
	ch, ev, err = b2.store.Unsubscribe(ctx, "x@example.com")
	if !errors.Is(err, suppress.ErrEvent) || !ch.Stored || ev != nil {
		t.Errorf("Unsubscribe without a result stream: %+v, %+v, %v", ch, ev, err)
	}
	if _, err := b2.store.Get(ctx, "x@example.com"); err != nil {
		t.Error(err)
	}
}

// readEvent reads the unsubscribe event id back from the result stream.
func readEvent(t *testing.T, js jetstream.JetStream, id string) suppress.Event {
	t.Helper()
	st, err := js.Stream(t.Context(), "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), "mail.event.unsubscribe."+id)
	if err != nil {
		t.Fatalf("no event %s in the result stream: %v", id, err)
	}
	var ev suppress.Event
	if err := jsonUnmarshalStrict(m.Data, &ev); err != nil {
		t.Fatalf("event %s: %v", m.Data, err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != id {
		t.Errorf("Nats-Msg-Id %q, want %q", m.Header.Get(jetstream.MsgIDHeader), id)
	}
	return ev
}
