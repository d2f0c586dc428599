package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestSoak pushes many messages through a worker while the SMTP server
// fails at random: 10% of the ends of DATA answer 451, 0.5% of the DATA
// bodies and 0.5% of the MAIL commands lose the connection. At the end every
// message must have exactly one final result, all of them sent, and
// jetmail_results_total{state="sent"} must equal the number of distinct
// messages the SMTP server received.
//
// By default (and with -short) it sends 2000 messages so that CI runs the
// code path. The real soak:
//
//	JETMAIL_SOAK=1 go test -run '^TestSoak$' -v -timeout 30m ./worker/
//
// sends 100000 (without -race, which would make it several times slower);
// JETMAIL_SOAK_N=20000 changes the count. It prints messages, duration,
// messages per second, deferred events and duplicates at the SMTP server.
func TestSoak(t *testing.T) {
	t.Parallel()
	n := 2000
	if os.Getenv("JETMAIL_SOAK") == "1" && !testing.Short() {
		n = 100000
		if v := os.Getenv("JETMAIL_SOAK_N"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 1 {
				t.Fatalf("JETMAIL_SOAK_N=%q is not a positive number", v)
			}
		}
	}

	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Code: 451, Enhanced: "4.3.0", Message: "soak: try again later", Probability: 0.10})
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Drop: true, Probability: 0.005})
	srv.AddFault(smtptest.Fault{Cmd: "MAIL", Drop: true, Probability: 0.005})

	js := jstest.Start(t).NATS()
	b := &testBundle{srv: js}
	b.nc, b.js = jstest.Connect(t, js.ClientURL())
	tally := watchTally(t, b.nc)
	b.startWorker(t, Config{
		Concurrency: 32,
		Retry:       RetryPolicy{Initial: 2 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxInterval: 50 * time.Millisecond, MaxAttempts: 20, MaxAge: time.Hour},
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 8}},
	})

	_, pubJS := jstest.Connect(t, js.ClientURL())
	start := time.Now()
	var pubs []jetstream.PubAckFuture
	flush := func() {
		for _, f := range pubs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Fatalf("publish: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("publish not acknowledged within 30s")
			}
		}
		pubs = pubs[:0]
	}
	for i := range n {
		id := fmt.Sprintf("soak%07d", i)
		data, err := json.Marshal(mailReq(id))
		if err != nil {
			t.Fatal(err)
		}
		f, err := pubJS.PublishAsync("mail.send", data, jetstream.WithMsgID(id))
		if err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
		if pubs = append(pubs, f); len(pubs) == 1000 {
			flush()
		}
	}
	flush()
	published := time.Since(start)

	tally.wait(t, n, time.Duration(n)*10*time.Millisecond+60*time.Second)
	elapsed := time.Since(start)
	waitIdle(t, pubJS)

	if srv.FaultHits() == 0 {
		t.Fatal("no fault fired")
	}
	tally.mu.Lock()
	var multi, notSent []string
	for id, c := range tally.finals {
		if c > 1 {
			multi = append(multi, id)
		}
	}
	for id, st := range tally.final {
		if st != schema.StateSent {
			notSent = append(notSent, id+" "+string(st))
		}
	}
	deferred, distinctFinal := tally.deferred, len(tally.finals)
	tally.mu.Unlock()
	if distinctFinal != n || len(multi) > 0 || len(notSent) > 0 {
		t.Errorf("%d of %d messages have a final result; %d have more than one (%.5q); %d not sent (%.5q)", distinctFinal, n, len(multi), multi, len(notSent), notSent)
	}

	msgs := srv.Messages()
	counts := sinkCounts(t, msgs)
	dups := len(msgs) - len(counts)
	sent := testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200"))
	if int(sent) != len(counts) || len(counts) != n {
		t.Errorf("jetmail_results_total{state=sent} = %v, the SMTP server received %d distinct messages, %d were published", sent, len(counts), n)
	}
	transient := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "transient"))
	t.Logf("soak: %d messages in %v (published in %v): %.0f msg/s; %d deferred events, %.0f transient attempts, %d faults fired, %d SMTP connections, %d duplicates at the SMTP server",
		n, elapsed.Round(time.Millisecond), published.Round(time.Millisecond), float64(n)/elapsed.Seconds(), deferred, transient, srv.FaultHits(), srv.Connections(), dups)
}

// tally counts result events by Id without keeping them, for large runs.
type tally struct {
	mu       sync.Mutex
	cond     *sync.Cond
	finals   map[string]int
	final    map[string]schema.State
	lane     map[string]schema.Lane // of the final result (storedTally)
	deferred int
	events   int // storedTally
}

func watchTally(t testing.TB, nc *nats.Conn) *tally {
	t.Helper()
	l := &tally{finals: map[string]int{}, final: map[string]schema.State{}}
	l.cond = sync.NewCond(&l.mu)
	sub, err := nc.Subscribe("mail.result.>", func(m *nats.Msg) {
		var r schema.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("result not JSON: %v", err)
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		switch {
		case r.Final():
			l.finals[r.Id]++
			l.final[r.Id] = r.State
			l.cond.Broadcast()
		case r.State == schema.StateDeferred:
			l.deferred++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// wait blocks until n distinct messages have a final result.
func (l *tally) wait(t testing.TB, n int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.finals) < n {
		if ctx.Err() != nil {
			t.Fatalf("after %s only %d of %d messages have a final result", d, len(l.finals), n)
		}
		l.cond.Wait()
	}
}

// TestSoakLanes is the soak across the lanes, with two workers on one
// server: 10% of the requests urgent (mail.urgent), 60% normal
// (mail.send), 30% bulk (mail.bulk), while the SMTP server answers 5% of
// the ends of DATA with 451 and drops 1% of the connections (half during
// DATA, half at MAIL). It reads the outcome from the result stream, as a
// producer would: every request must have exactly one final result, sent,
// in its own lane; the sum over both workers of
// jetmail_results_total{state="sent"} must equal the number of distinct
// Message-IDs at the SMTP server, and that the number of requests.
// Duplicates at the server are counted and reported.
//
// CI sends 1,500. The real soak sends 100,000 (JETMAIL_SOAK_N changes it):
//
//	JETMAIL_SOAK=1 go test -run '^TestSoakLanes$' -v -timeout 30m ./worker/
func TestSoakLanes(t *testing.T) {
	t.Parallel()
	n := 1500
	if os.Getenv("JETMAIL_SOAK") == "1" && !testing.Short() {
		n = 100000
		if v := os.Getenv("JETMAIL_SOAK_N"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 1 {
				t.Fatalf("JETMAIL_SOAK_N=%q is not a positive number", v)
			}
		}
	}
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Code: 451, Enhanced: "4.3.0", Message: "soak: try again later", Probability: 0.05})
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Drop: true, Probability: 0.005})
	srv.AddFault(smtptest.Fault{Cmd: "MAIL", Drop: true, Probability: 0.005})

	js := jstest.Start(t).NATS()
	var workers []*testBundle
	for range 2 {
		b := &testBundle{srv: js}
		b.nc, b.js = jstest.Connect(t, js.ClientURL())
		b.startWorker(t, Config{
			Concurrency: 16,
			Retry:       RetryPolicy{Initial: 2 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxInterval: 50 * time.Millisecond, MaxAttempts: 20, MaxAge: time.Hour},
			Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
		})
		workers = append(workers, b)
	}
	_, pubJS := jstest.Connect(t, js.ClientURL())
	tally := storedTally(t, pubJS)

	// The lane of request i: 1 in 10 urgent, 6 normal, 3 bulk.
	laneOf := func(i int) (schema.Lane, string) {
		switch i % 10 {
		case 0:
			return schema.LaneUrgent, "mail.urgent"
		case 7, 8, 9:
			return schema.LaneBulk, "mail.bulk"
		}
		return schema.LaneNormal, "mail.send"
	}
	id := func(i int) string { return fmt.Sprintf("lane%07d", i) }
	start := time.Now()
	var pubs []jetstream.PubAckFuture
	flush := func() {
		for _, f := range pubs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Fatalf("publish: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("publish not acknowledged within 30s")
			}
		}
		pubs = pubs[:0]
	}
	for i := range n {
		data, err := json.Marshal(mailReq(id(i)))
		if err != nil {
			t.Fatal(err)
		}
		_, subject := laneOf(i)
		f, err := pubJS.PublishAsync(subject, data, jetstream.WithMsgID(id(i)))
		if err != nil {
			t.Fatalf("publish %s: %v", id(i), err)
		}
		if pubs = append(pubs, f); len(pubs) == 1000 {
			flush()
		}
	}
	flush()
	published := time.Since(start)

	tally.wait(t, n, time.Duration(n)*10*time.Millisecond+60*time.Second)
	elapsed := time.Since(start)
	waitLanesIdle(t, pubJS)
	if srv.FaultHits() == 0 {
		t.Fatal("no fault fired")
	}

	tally.mu.Lock()
	var multi, notSent, wrongLane []string
	perLane := map[schema.Lane]int{}
	for i := range n {
		want, _ := laneOf(i)
		switch c := tally.finals[id(i)]; {
		case c > 1:
			multi = append(multi, id(i))
		case c == 0:
			notSent = append(notSent, id(i)+" none")
			continue
		}
		if st := tally.final[id(i)]; st != schema.StateSent {
			notSent = append(notSent, id(i)+" "+string(st))
		}
		if got := tally.lane[id(i)]; got != want {
			wrongLane = append(wrongLane, id(i)+" "+string(got))
		}
		perLane[want]++
	}
	deferred, events := tally.deferred, tally.events
	tally.mu.Unlock()
	if len(multi) > 0 || len(notSent) > 0 || len(wrongLane) > 0 {
		t.Errorf("of %d requests: %d with more than one final result (%.5q), %d not sent (%.5q), %d in the wrong lane (%.5q)",
			n, len(multi), multi, len(notSent), notSent, len(wrongLane), wrongLane)
	}

	msgs := srv.Messages()
	counts := sinkCounts(t, msgs)
	dups := len(msgs) - len(counts)
	var sent, ok float64
	var shares []float64
	for _, b := range workers {
		s := testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200"))
		sent += s
		shares = append(shares, s)
		ok += testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "ok"))
	}
	if int(sent) != len(counts) || len(counts) != n {
		t.Errorf("sum of jetmail_results_total{state=sent} = %v, the SMTP server holds %d distinct Message-IDs, %d were published", sent, len(counts), n)
	}
	if int(ok) != len(msgs) {
		t.Errorf("sum of jetmail_smtp_attempts_total{outcome=ok} = %v, the SMTP server holds %d messages", ok, len(msgs))
	}
	t.Logf("soak across the lanes: %d requests (urgent %d, normal %d, bulk %d) in %v (published in %v): %.0f msg/s; two workers sent %v; %d events stored, %d deferred; %d faults fired, %d SMTP connections; %d duplicates at the SMTP server",
		n, perLane[schema.LaneUrgent], perLane[schema.LaneNormal], perLane[schema.LaneBulk], elapsed.Round(time.Millisecond), published.Round(time.Millisecond),
		float64(n)/elapsed.Seconds(), shares, events, deferred, srv.FaultHits(), srv.Connections(), dups)
}

// storedTally counts the result events stored in JETMAIL_RESULTS by Id,
// without keeping them, for large runs: it reads the stream with an
// ordered consumer, so it sees each stored event once, and never an event
// that JetStream refused.
func storedTally(t testing.TB, js jetstream.JetStream) *tally {
	t.Helper()
	l := &tally{finals: map[string]int{}, final: map[string]schema.State{}, lane: map[string]schema.Lane{}}
	l.cond = sync.NewCond(&l.mu)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, "JETMAIL_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		var r schema.Result
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			t.Errorf("stored result not JSON: %v", err)
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.events++
		switch {
		case r.Final():
			l.finals[r.Id]++
			l.final[r.Id] = r.State
			l.lane[r.Id] = r.Lane
			l.cond.Broadcast()
		case r.State == schema.StateDeferred:
			l.deferred++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return l
}

// waitLanesIdle waits until the consumers of all three lanes hold nothing.
func waitLanesIdle(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	jstest.Eventually(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, l := range config.Lanes {
			c, err := js.Consumer(ctx, "JETMAIL_REQUESTS", schema.DefaultNames().LaneConsumer(l))
			if err != nil {
				return false
			}
			info, err := c.Info(ctx)
			if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
				return false
			}
		}
		return true
	})
}
