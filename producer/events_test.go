package producer_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

func TestEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	if _, err := b.p.Events(t.Context(), "m1"); !errors.Is(err, producer.ErrNotFound) {
		t.Fatalf("empty stream: got %v, want ErrNotFound", err)
	}
	accepted := result("m1", schema.StateAccepted, schema.Status202, 1)
	accepted.Envelope = &schema.Envelope{From: "shop@example.com", Recipients: []string{"jan@example.com", "bcc@example.com"}, Subject: "Zażółć"}
	deferred := result("m1", schema.StateDeferred, schema.Status202, 1)
	deferred.Error = "451 4.3.0 try later"
	sent := result("m1", schema.StateSent, schema.Status200, 2)
	b.publishResults(t,
		accepted,
		result("other", schema.StateAccepted, schema.Status202, 1),
		deferred,
		result("other", schema.StateSent, schema.Status200, 1),
		sent,
		result("m10", schema.StateAccepted, schema.Status202, 1), // not m1's, though m1 is its prefix
	)
	got, err := b.p.Events(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	want := []*schema.Result{&accepted, &deferred, &sent}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events of m1 (-want +got):\n%s", diff)
	}
	if _, err := b.p.Events(t.Context(), "unknown"); !errors.Is(err, producer.ErrNotFound) {
		t.Errorf("unknown Id: got %v, want ErrNotFound", err)
	}
	if _, err := b.p.Events(t.Context(), "a.b"); !errors.Is(err, producer.ErrInvalidID) {
		t.Errorf("invalid Id: got %v, want ErrInvalidID", err)
	}
	if n := b.consumers(t); n != 0 {
		t.Errorf("Events left %d consumers on the result stream, want 0", n)
	}
}

// TestEventsKept: the stream keeps the latest 32 events of an Id, and
// Events returns those, oldest first.
func TestEventsKept(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())
	var all []schema.Result
	for i := range 40 {
		all = append(all, result("busy", schema.StateDeferred, schema.Status202, i+1))
	}
	b.publishResults(t, all...)
	got, err := b.p.Events(t.Context(), "busy")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 32 || got[0].Attempt != 9 || got[31].Attempt != 40 {
		t.Errorf("got %d events, attempts %d to %d; want the last 32, 9 to 40", len(got), got[0].Attempt, got[len(got)-1].Attempt)
	}
}

func TestEventsErrors(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Events(t.Context(), "m1"); !errors.Is(err, producer.ErrNoStream) {
		t.Errorf("no stream: got %v, want ErrNoStream", err)
	}

	b := setup(t, schema.DefaultNames())
	b.publishResults(t, result("bad", schema.StateAccepted, schema.Status202, 1))
	if _, err := b.js.Publish(t.Context(), "mail.result.bad", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.p.Events(t.Context(), "bad"); !errors.Is(err, producer.ErrMalformed) {
		t.Errorf("malformed event: got %v, want ErrMalformed", err)
	}
}
