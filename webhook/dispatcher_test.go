package webhook

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/schema"
)

// setupHook starts NATS with the result stream and a receiver; most tests
// begin here.
func setupHook(t *testing.T) (*natsServer, jetstream.JetStream, *receiver) {
	t.Helper()
	n := startNATS(t)
	js := connect(t, n.url())
	createResultStream(t, js)
	return n, js, newReceiver(t, testKey)
}

// checkDelivered asserts that every event reached r exactly once, with
// the body unchanged, under the expected webhook-id.
func checkDelivered(t *testing.T, r *receiver, evs []event) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range evs {
		got := r.delivered[ev.id]
		if len(got) != 1 {
			t.Errorf("event %s delivered %d times, want once", ev.id, len(got))
			continue
		}
		if !bytes.Equal(got[0], ev.body) {
			t.Errorf("event %s: body\n%s\nwant the stored bytes\n%s", ev.id, got[0], ev.body)
		}
	}
	if len(r.delivered) != len(evs) {
		t.Errorf("%d distinct events delivered, want %d", len(r.delivered), len(evs))
	}
}

func TestDeliversEveryEvent(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, fastOptions(), nil)

	var evs []event
	for i, st := range []schema.State{schema.StateAccepted, schema.StateDeferred, schema.StateSent, schema.StateFailed} {
		for j := range 5 {
			evs = append(evs, publishResult(t, js, fmt.Sprintf("m%d-%d", i, j), st))
		}
	}
	// An event that is not a message's state, and one stored without a
	// Nats-Msg-Id (its webhook-id is then the stream position).
	evs = append(evs, publishRaw(t, js, "mail.event.unsubscribe", "unsub-1", []byte(`{"Address":"a@example.com","Reason":"unsubscribe"}`)))
	evs = append(evs, publishRaw(t, js, "mail.result.noid", "", []byte(`{"Id":"noid","State":"sent"}`)))

	waitFor(t, 10*time.Second, "every event delivered", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, evs)
	if got := evs[len(evs)-1].id; !strings.HasPrefix(got, "JETMAIL_RESULTS-") {
		t.Errorf("webhook-id of an event without Nats-Msg-Id: %s", got)
	}
	d.wantDeliveries(t, "crm", len(evs), 0, 0)
	waitFor(t, 5*time.Second, "jetmail_webhook_pending 0", func() bool { return d.pending("crm") == 0 })
}

// TestStreamWithoutEventSubjects: the result stream as today's worker
// creates it has no <prefix>.event.> subject; the consumer's filter may
// name it all the same.
func TestStreamWithoutEventSubjects(t *testing.T) {
	t.Parallel()
	js := connect(t, startNATS(t).url())
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "JETMAIL_RESULTS", Subjects: []string{"mail.result.>"}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t, testKey)
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, fastOptions(), nil)
	evs := []event{publishResult(t, js, "only-results", schema.StateSent)}
	waitFor(t, 10*time.Second, "the event delivered", func() bool { return r.count() == 1 })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, evs)
	d.wantDeliveries(t, "crm", 1, 0, 0)
}

// TestStreamCreatedLater: a dispatcher started before the worker has
// created the result stream waits for it, and gets the events stored
// before it could create its consumer (DeliverNew would lose them).
func TestStreamCreatedLater(t *testing.T) {
	t.Parallel()
	js := connect(t, startNATS(t).url())
	r := newReceiver(t, testKey)
	var logs lockedBuffer
	hooks := []Config{hookTo("crm", r)}
	d := newDispatcher(t, js, hooks, fastOptions(), slog.New(slog.NewTextHandler(&logs, nil)))
	d.start(t)
	waitFor(t, 10*time.Second, "a failed consumer set-up", func() bool {
		return strings.Contains(logs.String(), "cannot set up the webhook's consumer; retrying")
	})
	createResultStream(t, js)
	evs := []event{publishResult(t, js, "early", schema.StateAccepted)}
	if _, err := js.Consumer(context.Background(), "JETMAIL_RESULTS", ConsumerPrefix+"crm"); err == nil {
		t.Fatal("the consumer was created before the event was stored: the test proves nothing")
	}
	waitFor(t, 10*time.Second, "the early event delivered", func() bool { return r.count() == 1 })
	checkDelivered(t, r, evs)
}

func TestRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(r *receiver)
		fired func(r *receiver) int
		n     int
	}{
		{"after 500", func(r *receiver) { r.fail = 3 }, func(r *receiver) int { return r.failed }, 3},
		{"after a timeout", func(r *receiver) { r.hang = 1 }, func(r *receiver) int { return r.hung }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js, r := setupHook(t)
			r.set(tc.fault)
			opts := fastOptions()
			opts.Timeout = 300 * time.Millisecond
			var logs lockedBuffer
			d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			ev := publishResult(t, js, "retried", schema.StateSent)

			waitFor(t, 10*time.Second, "the event delivered", func() bool { return r.count() == 1 })
			r.mu.Lock()
			fired, requests := tc.fired(r), slices.Clone(r.requests)
			r.mu.Unlock()
			if fired != tc.n {
				t.Fatalf("the fault fired %d times, want %d", fired, tc.n)
			}
			if len(requests) != tc.n+1 {
				t.Fatalf("%d requests, want %d: %v", len(requests), tc.n+1, requests)
			}
			for _, id := range requests {
				if id != ev.id {
					t.Fatalf("webhook-ids %v: want %s on every try", requests, ev.id)
				}
			}
			waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
			checkDelivered(t, r, []event{ev})
			d.wantDeliveries(t, "crm", 1, tc.n, 0)

			out := logs.String()
			if got := strings.Count(out, "webhook delivery failed; retrying"); got != tc.n {
				t.Errorf("%d retry log lines, want %d:\n%s", got, tc.n, out)
			}
			for _, secret := range []string{base64.StdEncoding.EncodeToString(testKey), string(testKey), "ünïcode", "tok-crm"} {
				if strings.Contains(out, secret) {
					t.Errorf("the log shows %q:\n%s", secret, out)
				}
			}
		})
	}
}

func TestStatesFilter(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	d := startDispatcher(t, js, []Config{hookTo("crm", r, schema.StateSent, schema.StateFailed)}, fastOptions(), nil)
	var want []event
	for i, st := range []schema.State{schema.StateAccepted, schema.StateDeferred, schema.StateSent, "scheduled", schema.StateFailed, "cancelled"} {
		ev := publishResult(t, js, fmt.Sprintf("s%d", i), st)
		if st == schema.StateSent || st == schema.StateFailed {
			want = append(want, ev)
		}
	}
	// Not a result event: the states do not apply to it.
	want = append(want, publishRaw(t, js, "mail.event.unsubscribe", "unsub-1", []byte(`{"Address":"a@example.com"}`)))

	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, want)
	if n := r.requestCount(); n != len(want) {
		t.Errorf("%d requests, want %d", n, len(want))
	}
	d.wantDeliveries(t, "crm", len(want), 0, 0)
}

// TestDeadWebhookDoesNotDelayHealthy: while one endpoint hangs every
// request, another gets every event before the first hung POST has even
// timed out.
func TestDeadWebhookDoesNotDelayHealthy(t *testing.T) {
	t.Parallel()
	_, js, live := setupHook(t)
	dead := newReceiver(t, testKey)
	dead.set(func(r *receiver) { r.hangAll = true })
	opts := fastOptions()
	opts.Timeout = 3 * time.Second
	opts.Concurrency = 4
	d := startDispatcher(t, js, []Config{hookTo("dead", dead), hookTo("live", live)}, opts, nil)

	start := time.Now()
	evs := publishMany(t, js, "e", 40)
	waitFor(t, 10*time.Second, "every event at the live endpoint", func() bool { return live.count() == len(evs) })
	elapsed := time.Since(start)
	waitFor(t, 10*time.Second, "the live consumer idle", func() bool { return consumerIdle(t, js, "live") })
	waitFor(t, 5*time.Second, "Concurrency POSTs hanging at the dead endpoint", func() bool {
		dead.mu.Lock()
		defer dead.mu.Unlock()
		return dead.inflight == opts.Concurrency
	})
	if elapsed >= opts.Timeout {
		t.Errorf("the live endpoint got its %d events after %s, not before the dead one's first timeout (%s)", len(evs), elapsed, opts.Timeout)
	}
	checkDelivered(t, live, evs)
	dead.mu.Lock()
	hung, maxFlight, delivered := dead.hung, dead.maxFlight, len(dead.delivered)
	dead.mu.Unlock()
	if hung < opts.Concurrency || delivered != 0 {
		t.Fatalf("the dead endpoint hung %d requests and took %d events: the fault did not happen", hung, delivered)
	}
	if maxFlight > opts.Concurrency {
		t.Errorf("%d POSTs in flight at once to the dead endpoint, more than Concurrency %d", maxFlight, opts.Concurrency)
	}
	t.Logf("the live endpoint had all %d events after %s; the dead one had %d POSTs hanging", len(evs), elapsed, maxFlight)
	d.wantDeliveries(t, "live", len(evs), 0, 0)
	dead.unblock() // answer the hung POSTs, so stopping does not wait for their timeout
}

// TestRestartDispatcherWithPending: events that a stopped Dispatcher
// could not deliver are delivered by the next one.
func TestRestartDispatcherWithPending(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	r.set(func(r *receiver) { r.down = true })
	hooks := []Config{hookTo("crm", r)}
	first := startDispatcher(t, js, hooks, fastOptions(), nil)
	evs := publishMany(t, js, "p", 10)
	waitFor(t, 10*time.Second, "every event tried", func() bool { return r.attempted() == len(evs) })
	first.stop()
	if r.count() != 0 {
		t.Fatal("events were delivered while the endpoint was down")
	}
	if first.deliveries("crm", "retry") < len(evs) {
		t.Fatalf("%d retries counted before the restart, want at least %d", first.deliveries("crm", "retry"), len(evs))
	}

	r.set(func(r *receiver) { r.down = false })
	second := startDispatcher(t, js, hooks, fastOptions(), nil)
	waitFor(t, 10*time.Second, "every event delivered after the restart", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, evs)
	second.wantDeliveries(t, "crm", len(evs), 0, 0)
}

// TestNATSRestart: events pending while the NATS server restarts on the
// same store are delivered, and so are events stored after it.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	n, js, r := setupHook(t)
	r.set(func(r *receiver) { r.down = true })
	opts := fastOptions()
	opts.Timeout = 500 * time.Millisecond
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, nil)
	evs := publishMany(t, js, "before", 10)
	waitFor(t, 10*time.Second, "every event tried", func() bool { return r.attempted() == len(evs) })

	n.stop()
	if r.count() != 0 {
		t.Fatal("events were delivered while the endpoint was down")
	}
	r.set(func(r *receiver) { r.down = false })
	n.start()
	pubJS := connect(t, n.url())
	evs = append(evs, publishMany(t, pubJS, "after", 5)...)
	waitFor(t, 30*time.Second, "every event delivered after the restart", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, pubJS, "crm") })
	checkDelivered(t, r, evs)
	if got := d.deliveries("crm", "ok"); got != len(evs) {
		t.Errorf("ok deliveries %d, want %d", got, len(evs))
	}
}

// TestTwoDispatchersPostOnce: two workers share the webhook's consumer,
// so each event is POSTed once, not once per worker.
func TestTwoDispatchersPostOnce(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	hooks := []Config{hookTo("crm", r)}
	a := newDispatcher(t, connect(t, js.Conn().ConnectedUrl()), hooks, fastOptions(), nil)
	b := newDispatcher(t, connect(t, js.Conn().ConnectedUrl()), hooks, fastOptions(), nil)
	a.start(t) // both at once, racing to create the consumer
	b.start(t)
	// Rarely, the first pull of the dispatcher that found the consumer
	// while the other was still creating it goes missing; the dispatcher
	// asks again when heartbeats do not come, within 4s.
	waitFor(t, 10*time.Second, "both dispatchers pulling", func() bool {
		c, err := js.Consumer(context.Background(), "JETMAIL_RESULTS", ConsumerPrefix+"crm")
		return err == nil && c.CachedInfo().NumWaiting >= 2
	})

	evs := publishMany(t, js, "once", 200)
	waitFor(t, 20*time.Second, "every event delivered", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, evs)
	if n := r.requestCount(); n != len(evs) {
		t.Errorf("%d POSTs for %d events", n, len(evs))
	}
	na, nb := a.deliveries("crm", "ok"), b.deliveries("crm", "ok")
	if na+nb != len(evs) || na == 0 || nb == 0 {
		t.Errorf("the dispatchers delivered %d and %d events, want both some and %d in all", na, nb, len(evs))
	}
}

func TestDropAfterMaxAge(t *testing.T) {
	t.Parallel()
	t.Run("retried until too old", func(t *testing.T) {
		t.Parallel()
		_, js, r := setupHook(t)
		r.set(func(r *receiver) { r.down = true })
		opts := fastOptions()
		opts.MaxAge = time.Hour
		// Each failed POST moves the clock on by 25 minutes: the POSTs
		// end at ages 25m and 50m (retried) and 75m (dropped, as the
		// retry would be past the hour).
		opts.Now = func() time.Time { return time.Now().Add(time.Duration(r.nFailed.Load()) * 25 * time.Minute) }
		r.set(func(r *receiver) { r.clock = opts.Now })
		d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, nil)
		publishResult(t, js, "old-retried", schema.StateSent)
		waitFor(t, 10*time.Second, "the event dropped", func() bool { return d.deliveries("crm", "dropped") == 1 })
		waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
		r.mu.Lock()
		failed := r.failed
		r.mu.Unlock()
		if failed != 3 {
			t.Fatalf("the endpoint failed %d POSTs before the drop, want 3", failed)
		}
		d.wantDeliveries(t, "crm", 0, 2, 1)
	})
	t.Run("too old when its turn comes", func(t *testing.T) {
		t.Parallel()
		_, js, r := setupHook(t)
		opts := fastOptions()
		opts.MaxAge = time.Hour
		opts.Now = func() time.Time { return time.Now().Add(61 * time.Minute) }
		d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, nil)
		publishResult(t, js, "old", schema.StateSent)
		waitFor(t, 10*time.Second, "the event dropped", func() bool { return d.deliveries("crm", "dropped") == 1 })
		waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
		if n := r.requestCount(); n != 0 {
			t.Errorf("%d POSTs of an event older than MaxAge", n)
		}
		d.wantDeliveries(t, "crm", 0, 0, 1)
	})
}

// TestNewWebhookStartsNow: a new webhook gets no history; one that exists
// resumes where it stopped, and its settings are updated.
func TestNewWebhookStartsNow(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	publishMany(t, js, "history", 3)
	hooks := []Config{hookTo("crm", r)}
	first := startDispatcher(t, js, hooks, fastOptions(), nil)
	evs := publishMany(t, js, "new", 3)
	waitFor(t, 10*time.Second, "the new events delivered", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "the consumer idle", func() bool { return consumerIdle(t, js, "crm") })
	checkDelivered(t, r, evs)
	first.stop()

	evs = append(evs, publishMany(t, js, "while-stopped", 2)...)
	opts := fastOptions()
	opts.Timeout = 7 * time.Second
	opts.MaxAckPending = 9
	startDispatcher(t, js, hooks, opts, nil)
	waitFor(t, 10*time.Second, "the events stored meanwhile delivered", func() bool { return r.count() == len(evs) })
	checkDelivered(t, r, evs)

	c, err := js.Consumer(context.Background(), "JETMAIL_RESULTS", ConsumerPrefix+"crm")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	if cfg.DeliverPolicy != jetstream.DeliverByStartTimePolicy || cfg.AckPolicy != jetstream.AckExplicitPolicy ||
		cfg.AckWait != 3*opts.Timeout+2*time.Second || cfg.MaxAckPending != 9 || cfg.MaxDeliver != -1 ||
		!slices.Equal(cfg.FilterSubjects, []string{"mail.result.>", "mail.event.>"}) {
		t.Errorf("consumer config: deliver %v ack %v wait %s max ack pending %d max deliver %d filters %v",
			cfg.DeliverPolicy, cfg.AckPolicy, cfg.AckWait, cfg.MaxAckPending, cfg.MaxDeliver, cfg.FilterSubjects)
	}
}

// TestStopWhileNATSDown: Run returns when its context ends even when the
// NATS server is gone, with a POST in flight.
func TestStopWhileNATSDown(t *testing.T) {
	t.Parallel()
	n, js, r := setupHook(t)
	r.set(func(r *receiver) { r.hang = 1 })
	opts := fastOptions()
	opts.Timeout = time.Second
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, nil)
	publishResult(t, js, "inflight", schema.StateSent)
	waitFor(t, 10*time.Second, "a POST hanging", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.hung == 1 })
	n.stop()
	start := time.Now()
	d.stop()
	if took := time.Since(start); took > opts.Timeout+3*time.Second {
		t.Errorf("Run returned %s after its context ended, with NATS down; want about the POST timeout, %s", took, opts.Timeout)
	}
}

func TestNoRedirects(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	elsewhere := newReceiver(t, testKey)
	r.set(func(r *receiver) { r.redirect = elsewhere.srv.URL + "/stolen" })
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, fastOptions(), nil)
	publishResult(t, js, "redirected", schema.StateSent)
	waitFor(t, 10*time.Second, "two redirected POSTs", func() bool { return r.requestCount() >= 2 })
	if n := elsewhere.requestCount(); n != 0 {
		t.Fatalf("the redirect was followed: %d requests elsewhere", n)
	}
	if d.deliveries("crm", "retry") < 1 || d.deliveries("crm", "ok") != 0 {
		t.Fatalf("a redirect counted ok %d, retry %d; want a retry", d.deliveries("crm", "ok"), d.deliveries("crm", "retry"))
	}
}

func TestMetricsRegistered(t *testing.T) {
	t.Parallel()
	js := connect(t, startNATS(t).url())
	reg := prometheus.NewRegistry()
	hooks := []Config{
		{Name: "a", URL: "https://a.example/", Secret: testKey},
		{Name: "b", URL: "https://b.example/", Secret: testKey},
	}
	if _, err := New(js, schema.DefaultNames(), hooks, reg, nil, Options{}); err != nil {
		t.Fatal(err)
	}
	want := `# HELP jetmail_webhook_deliveries_total ` + deliveriesHelp + `
# TYPE jetmail_webhook_deliveries_total counter
jetmail_webhook_deliveries_total{outcome="dropped",webhook="a"} 0
jetmail_webhook_deliveries_total{outcome="dropped",webhook="b"} 0
jetmail_webhook_deliveries_total{outcome="ok",webhook="a"} 0
jetmail_webhook_deliveries_total{outcome="ok",webhook="b"} 0
jetmail_webhook_deliveries_total{outcome="retry",webhook="a"} 0
jetmail_webhook_deliveries_total{outcome="retry",webhook="b"} 0
# HELP jetmail_webhook_pending Events not yet delivered to a webhook (waiting, being POSTed, or waiting for a retry), from its consumer.
# TYPE jetmail_webhook_pending gauge
jetmail_webhook_pending{webhook="a"} 0
jetmail_webhook_pending{webhook="b"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(js, schema.DefaultNames(), hooks, reg, nil, Options{}); err == nil {
		t.Error("a second Dispatcher registered the same metrics on one registry")
	}
	if _, err := New(js, schema.DefaultNames(), hooks, nil, nil, Options{}); err != nil {
		t.Errorf("nil registerer: %v", err)
	}
}

// TestPendingGauge: jetmail_webhook_pending counts the events not yet
// delivered, waiting ones and retried ones alike.
func TestPendingGauge(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	r.set(func(r *receiver) { r.down = true })
	opts := fastOptions()
	opts.Concurrency, opts.MaxAckPending = 1, 2 // 2 taken and retried, the rest waiting
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, opts, nil)
	evs := publishMany(t, js, "g", 6)
	waitFor(t, 10*time.Second, "jetmail_webhook_pending 6", func() bool { return d.pending("crm") == 6 })
	if n := r.attempted(); n > 2 {
		t.Errorf("%d events taken from the stream, more than MaxAckPending 2", n)
	}
	r.set(func(r *receiver) { r.down = false })
	waitFor(t, 10*time.Second, "every event delivered", func() bool { return r.count() == len(evs) })
	waitFor(t, 10*time.Second, "jetmail_webhook_pending 0", func() bool { return d.pending("crm") == 0 })
}

func TestDecide(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Initial: time.Second, Multiplier: 2, MaxInterval: 10 * time.Minute}
	maxAge := 24 * time.Hour
	noAnswer := errors.New("no answer")
	cases := []struct {
		name    string
		posted  bool
		status  int
		err     error
		age     time.Duration
		attempt int
		want    verdict
	}{
		{"200", true, 200, nil, 0, 1, verdict{verb: verbAck, outcome: "ok"}},
		{"204", true, 204, nil, time.Hour, 9, verdict{verb: verbAck, outcome: "ok"}},
		{"299", true, 299, nil, 0, 1, verdict{verb: verbAck, outcome: "ok"}},
		{"500, first", true, 500, nil, 0, 1, verdict{verb: verbNakDelay, delay: time.Second, outcome: "retry"}},
		{"500, third", true, 500, nil, 0, 3, verdict{verb: verbNakDelay, delay: 4 * time.Second, outcome: "retry"}},
		{"400 is retried too", true, 400, nil, 0, 2, verdict{verb: verbNakDelay, delay: 2 * time.Second, outcome: "retry"}},
		{"307", true, 307, nil, 0, 1, verdict{verb: verbNakDelay, delay: time.Second, outcome: "retry"}},
		{"100", true, 100, nil, 0, 1, verdict{verb: verbNakDelay, delay: time.Second, outcome: "retry"}},
		{"no answer", true, 0, noAnswer, 0, 1, verdict{verb: verbNakDelay, delay: time.Second, outcome: "retry"}},
		{"capped", true, 503, nil, time.Hour, 40, verdict{verb: verbNakDelay, delay: 10 * time.Minute, outcome: "retry"}},
		{"retry just within MaxAge", true, 500, nil, maxAge - 10*time.Minute, 40, verdict{verb: verbNakDelay, delay: 10 * time.Minute, outcome: "retry"}},
		{"retry past MaxAge", true, 500, nil, maxAge - 10*time.Minute + 1, 40, verdict{verb: verbTerm, outcome: "dropped"}},
		{"2xx past MaxAge is delivered", true, 200, nil, maxAge + time.Hour, 40, verdict{verb: verbAck, outcome: "ok"}},
		{"not posted: too old", false, 0, nil, maxAge + 1, 1, verdict{verb: verbTerm, outcome: "dropped"}},
	}
	for _, tc := range cases {
		if got := decide(tc.posted, tc.status, tc.err, tc.age, tc.attempt, maxAge, p); got != tc.want {
			t.Errorf("%s: decide = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	p := DefaultRetry
	p.Jitter = 0
	want := []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for n, w := range want {
		if got := p.Delay(n); got != w {
			t.Errorf("Delay(%d) = %s, want %s", n, got, w)
		}
	}
	if got := p.Delay(11); got != 10*time.Minute {
		t.Errorf("Delay(11) = %s, want the 10m cap", got)
	}
	// With jitter, within ±20%.
	for range 100 {
		if d := DefaultRetry.Delay(3); d < 3200*time.Millisecond || d > 4800*time.Millisecond {
			t.Fatalf("Delay(3) with 20%% jitter = %s", d)
		}
	}
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	js := connect(t, startNATS(t).url())
	good := Config{Name: "crm", URL: "https://crm.example.com/", Secret: testKey}
	with := func(f func(*Config)) []Config { c := good; f(&c); return []Config{c} }
	cases := []struct {
		name  string
		js    jetstream.JetStream
		hooks []Config
		opts  Options
		want  string
	}{
		{"no JetStream", nil, []Config{good}, Options{}, "no JetStream"},
		{"no webhooks", js, nil, Options{}, "no webhooks"},
		{"two of a name", js, []Config{good, good}, Options{}, "two webhooks named crm"},
		{"bad name", js, with(func(c *Config) { c.Name = "a.b" }), Options{}, `webhook name "a.b"`},
		{"bad URL", js, with(func(c *Config) { c.URL = "mailto:x@example.com" }), Options{}, "want http"},
		{"no secret", js, with(func(c *Config) { c.Secret = nil }), Options{}, "no secret"},
		{"bad state", js, with(func(c *Config) { c.States = []schema.State{"bounced"} }), Options{}, `state "bounced"`},
		{"negative timeout", js, []Config{good}, Options{Timeout: -1}, "Timeout must not be negative"},
		{"MaxAckPending below Concurrency", js, []Config{good}, Options{Concurrency: 8, MaxAckPending: 4}, "MaxAckPending 4 is below Concurrency 8"},
		{"bad retry", js, []Config{good}, Options{Retry: RetryPolicy{Initial: time.Second, Multiplier: 0.5, MaxInterval: time.Minute}}, "Retry.Multiplier"},
		{"bad subject", js, []Config{good}, Options{Subjects: []string{"mail result"}}, "Subjects"},
	}
	for _, tc := range cases {
		_, err := New(tc.js, schema.DefaultNames(), tc.hooks, nil, nil, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	_, js, r := setupHook(t)
	d := startDispatcher(t, js, []Config{hookTo("crm", r)}, fastOptions(), nil)
	if err := d.d.Run(context.Background()); err == nil {
		t.Fatal("a second Run while the first runs: no error")
	}
}
