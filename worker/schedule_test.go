package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// scheduledCount is the number of requests parked on schedule subjects.
func scheduledCount(t testing.TB, js jetstream.JetStream) int {
	t.Helper()
	st, err := js.Stream(context.Background(), "JETMAIL_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter("mail.schedule.>"))
	if err != nil {
		t.Fatal(err)
	}
	return len(info.State.Subjects)
}

// TestScheduledSendSurvivesNATSRestart publishes a request with a SendAt a
// few seconds ahead, as a raw NATS publisher would: it gets 202 scheduled
// (with SendAt and Envelope) at once and reaches no SMTP server before its
// time, the NATS server is restarted meanwhile, and after its time it is
// accepted and sent, once.
func TestScheduledSendSurvivesNATSRestart(t *testing.T) {
	t.Parallel()
	nats := jstest.Start(t)
	srv := smtptest.NewServer(t)
	b := &testBundle{srv: nats.NATS()}
	b.nc, b.js = nats.Connect(t)
	b.startWorker(t, Config{Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com"}}})
	b.results = jstest.StoredResults(t, b.js, "")

	sendAt := time.Now().Add(4 * time.Second).Truncate(time.Millisecond)
	data, _ := json.Marshal(map[string]any{"To": "jan@example.com", "Subject": "at nine", "SendAt": sendAt.Format(time.RFC3339Nano)})
	jstest.Publish(t, b.js, "mail.bulk.tenant", data, "sched-1")
	b.results.WaitUntil(t, 10*time.Second, "the scheduled event", func(events func(string) []schema.Result) bool {
		return len(events("sched-1")) > 0
	})
	ev := b.results.Events("sched-1")[0]
	if ev.State != schema.StateScheduled || ev.Status != schema.Status202 || ev.SendAt == nil || !ev.SendAt.Equal(sendAt) ||
		ev.Envelope == nil || ev.Envelope.Subject != "at nine" || ev.Lane != schema.LaneBulk {
		t.Fatalf("first event %+v, want 202 scheduled with SendAt %s, the Envelope and the bulk lane", ev, sendAt)
	}
	if n := scheduledCount(t, b.js); n != 1 {
		t.Errorf("%d parked requests, want 1", n)
	}
	nats.Restart()
	fin, events := b.results.Final(t, "sched-1")
	if fin.State != schema.StateSent {
		t.Fatalf("final %+v", fin)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages at the SMTP server, want 1", len(msgs))
	}
	if msgs[0].Received.Before(sendAt) {
		t.Errorf("sent at %s, before its SendAt %s", msgs[0].Received, sendAt)
	}
	if states(events)[1] != "accepted/202@1" || events[1].Lane != schema.LaneBulk {
		t.Errorf("events %v: want scheduled, accepted, sent in the bulk lane", states(events))
	}
	if n := scheduledCount(t, b.js); n != 0 {
		t.Errorf("%d parked requests left after the send", n)
	}
}

// TestSendAtRules: SendAt without an offset or beyond the schedule limit
// is a 400; one in the past means now.
func TestSendAtRules(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	b.publish(t, map[string]any{"Id": "sa-naive", "To": "a@example.com", "SendAt": "2027-01-01T09:00:00"}, "sa-naive")
	b.publish(t, map[string]any{"Id": "sa-far", "To": "a@example.com", "SendAt": time.Now().Add(40 * 24 * time.Hour).Format(time.RFC3339)}, "sa-far")
	b.publish(t, map[string]any{"Id": "sa-past", "To": "a@example.com", "SendAt": time.Now().Add(-time.Hour).Format(time.RFC3339)}, "sa-past")
	for _, id := range []string{"sa-naive", "sa-far"} {
		if fin, _ := b.results.Final(t, id); fin.Status != schema.Status400 || len(fin.Fields) == 0 || fin.Fields[0].Field != "SendAt" {
			t.Errorf("%s: %+v, want 400 on SendAt", id, fin)
		}
	}
	if fin, events := b.results.Final(t, "sa-past"); fin.Status != schema.Status200 || len(events) != 2 {
		t.Errorf("a SendAt in the past: %v, want accepted and sent at once", states(events))
	}
	b.publish(t, map[string]any{"Id": "sa-later", "To": "a@example.com", "SendAt": time.Now().Add(time.Hour).Format(time.RFC3339)}, "sa-later")
	jstest.Eventually(t, 15*time.Second, func() bool { return testutil.ToFloat64(b.worker.metrics.Scheduled) == 1 })
}

// TestCancelScheduled cancels a scheduled message: 410 at once, its parked
// copy removed, never sent; cancelling again changes nothing.
func TestCancelScheduled(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{})
	b.results = jstest.StoredResults(t, b.js, "") // what JetStream stored, not every publish
	p := newProducer(t, b)
	data, _ := json.Marshal(map[string]any{"Id": "cs-1", "To": "a@example.com", "SendAt": time.Now().Add(2 * time.Second).Format(time.RFC3339Nano)})
	jstest.Publish(t, b.js, "", data, "cs-1")
	b.results.WaitUntil(t, 10*time.Second, "scheduled", func(events func(string) []schema.Result) bool { return len(events("cs-1")) == 1 })
	res, err := p.Cancel(t.Context(), "cs-1")
	if err != nil || res.Outcome != producer.Cancelled || res.Event.Status != schema.Status410 {
		t.Fatalf("Cancel = %+v, %v", res, err)
	}
	if n := scheduledCount(t, b.js); n != 0 {
		t.Errorf("%d parked requests after the cancellation", n)
	}
	if res, err := p.Cancel(t.Context(), "cs-1"); err != nil || res.Outcome != producer.AlreadyCancelled {
		t.Errorf("second Cancel = %+v, %v", res, err)
	}
	// Past its time: nothing sent, no other event.
	time.Sleep(3 * time.Second) // the schedule's time must pass; nothing signals what did not happen
	if srv.MessageCount() != 0 || len(b.results.Events("cs-1")) != 2 {
		t.Errorf("after the time: %d messages, events %v", srv.MessageCount(), states(b.results.Events("cs-1")))
	}
}

// TestCancelWhileTheWorkerHoldsIt: the worker has taken the message and
// published accepted, but waits for the connection's rate limit before the
// SMTP transaction: the cancellation reaches it there, it publishes 410
// and never sends it.
func TestCancelWhileTheWorkerHoldsIt(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{Concurrency: 2, Connections: map[string]config.SMTP{"default": {RateLimit: 0.5}}})
	b.results = jstest.StoredResults(t, b.js, "")
	p := newProducer(t, b)
	b.publish(t, map[string]any{"Id": "hold-a", "To": "a@example.com"}, "hold-a") // takes the token
	b.results.Final(t, "hold-a")
	b.publish(t, map[string]any{"Id": "hold-b", "To": "b@example.com"}, "hold-b") // waits 2 s for the next
	b.results.WaitUntil(t, 10*time.Second, "hold-b accepted", func(events func(string) []schema.Result) bool { return len(events("hold-b")) == 1 })
	res, err := p.Cancel(t.Context(), "hold-b")
	if err != nil || res.String() != "cancelled" {
		t.Fatalf("Cancel = %+v (%s), %v; want cancelled", res, res, err)
	}
	fin, events := b.results.Final(t, "hold-b")
	if fin.State != schema.StateCancelled || fin.Status != schema.Status410 || len(events) != 2 {
		t.Errorf("events %v, want accepted then cancelled", states(events))
	}
	if srv.MessageCount() != 1 {
		t.Errorf("%d messages at the SMTP server, want only hold-a", srv.MessageCount())
	}
	if got := testutil.ToFloat64(b.worker.metrics.Cancelled); got != 1 {
		t.Errorf("cancelled_total = %v, want 1", got)
	}
}

// TestCancelQueuedAndTooLate: a message waiting behind a busy worker
// (prefetched, not yet worked on) is cancelled by the canceller itself,
// and the worker then drops it; a sent one is too late; an Id that was
// never published is unknown.
func TestCancelQueuedAndTooLate(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Times: 1, Delay: 2 * time.Second})
	b := smtpBundle(t, srv, Config{Concurrency: 1, Prefetch: 3})
	b.results = jstest.StoredResults(t, b.js, "")
	p := newProducer(t, b)
	b.publish(t, map[string]any{"Id": "q-slow", "To": "a@example.com"}, "q-slow")
	b.results.WaitUntil(t, 10*time.Second, "q-slow accepted", func(events func(string) []schema.Result) bool { return len(events("q-slow")) == 1 })
	b.publish(t, map[string]any{"Id": "q-wait", "To": "b@example.com"}, "q-wait")
	res, err := p.Cancel(t.Context(), "q-wait")
	if err != nil || res.Outcome != producer.Cancelled {
		t.Fatalf("Cancel(q-wait) = %+v, %v", res, err)
	}
	b.results.Final(t, "q-slow")
	if res, err := p.Cancel(t.Context(), "q-slow"); err != nil || res.Outcome != producer.TooLateFinal || res.String() != "too late (sent)" {
		t.Errorf("Cancel(q-slow) = %+v (%s), %v; want too late (sent)", res, res, err)
	}
	if res, err := p.Cancel(t.Context(), "q-never"); err != nil || res.Outcome != producer.Unknown {
		t.Errorf("Cancel(q-never) = %+v, %v; want unknown", res, err)
	}
	// The worker reaches q-wait and drops it without a second event.
	jstest.Eventually(t, 10*time.Second, func() bool {
		info, err := b.js.Consumer(t.Context(), "JETMAIL_REQUESTS", "jetmail-worker")
		return err == nil && info.CachedInfo().NumAckPending == 0 && info.CachedInfo().NumPending == 0
	})
	if events := b.results.Events("q-wait"); len(events) != 1 || events[0].State != schema.StateCancelled {
		t.Errorf("q-wait events %v, want cancelled only", states(events))
	}
	if srv.MessageCount() != 1 {
		t.Errorf("%d messages sent, want only q-slow", srv.MessageCount())
	}
}

// TestCancelBatch cancels a batch while it drains behind a slow relay:
// every message of it is counted, those cancelled are never sent, and
// each ends with exactly one final event.
func TestCancelBatch(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 10 * time.Millisecond})
	b := smtpBundle(t, srv, Config{Concurrency: 2})
	b.results = jstest.StoredResults(t, b.js, "") // what JetStream stored, not every publish
	p := newProducer(t, b)
	var ids []string
	for i := range 100 {
		id := "cb-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		ids = append(ids, id)
		data, _ := json.Marshal(map[string]any{"Id": id, "To": "a@example.com", "BatchId": "news-7"})
		jstest.Publish(t, b.js, "mail.bulk", data, id)
	}
	waitMessages(t, srv, 5)
	res, err := p.CancelBatch(t.Context(), "news-7")
	if err != nil {
		t.Fatal(err)
	}
	if res.Cancelled+res.TooLate != len(ids) || res.Cancelled < 50 {
		t.Errorf("CancelBatch = %+v, want all %d counted, most cancelled", res, len(ids))
	}
	sent := 0
	for _, id := range ids {
		fin, events := b.results.Final(t, id)
		finals := 0
		for _, ev := range events {
			if ev.Final() {
				finals++
			}
		}
		if finals != 1 {
			t.Errorf("%s: %d final events %v", id, finals, states(events))
		}
		if fin.State == schema.StateSent {
			sent++
		}
	}
	if srv.MessageCount() != sent {
		t.Errorf("%d messages at the SMTP server, %d sent events", srv.MessageCount(), sent)
	}
	t.Logf("batch of %d: %d cancelled, %d too late, %d sent", len(ids), res.Cancelled, res.TooLate, sent)
}

// newProducer is a producer on the bundle's JetStream.
func newProducer(t testing.TB, b *testBundle) *producer.Producer {
	t.Helper()
	p, err := producer.New(b.js)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
