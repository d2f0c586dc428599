package worker

// Tests of faults that only a nats-server of its own, as a process, can
// have: killed with SIGKILL under load (no shutdown, no flush), frozen with
// SIGSTOP (the sockets stay open, nothing answers), and cut off by a
// network partition (an nftables drop rule in the network namespace the
// server runs in). The worker runs in the test, so its metrics can be read;
// the nats-server binary is built from go.mod once per test binary
// (jstest.NATSServerBinary).
//
// CI runs a 12 s freeze and 10 s partitions. The long versions (a 20 s
// freeze, 90 s partitions):
//
//	JETMAIL_FAULTS=1 go test -run '^(TestNATSServerSIGKILL|TestNATSServerFrozen|TestNetworkPartition)$' -v -timeout 20m ./worker/
//
// The partition test needs root, ip and nft (it skips, saying so, without
// them); it alone:
//
//	sudo go test -run '^TestNetworkPartition$' -v ./worker/

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/worker/smtptest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	jstest.RemoveBinaries()
	os.Exit(code)
}

// load publishes requests at a steady pace, as a producer would, until
// stopped, and records which ones JetStream acknowledged. It goes on
// through the fault: publishes that get no acknowledgement are noted, and
// published again with the same Nats-Msg-Id once the fault is over, as a
// producer retries.
type load struct {
	js      jetstream.JetStream
	prefix  string
	futures chan pending
	stopped chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	acked   []string
	unacked []string
	n       int
}

type pending struct {
	id string
	f  jetstream.PubAckFuture
}

// startLoad publishes one request every interval on a connection of its
// own to url.
func startLoad(t *testing.T, url, prefix string, interval time.Duration) *load {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(3*time.Second), jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		t.Fatal(err)
	}
	l := &load{js: js, prefix: prefix, futures: make(chan pending, 256), stopped: make(chan struct{})}
	l.wg.Go(func() {
		defer close(l.futures)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-l.stopped:
				return
			case <-tick.C:
			}
			id := fmt.Sprintf("%s%05d", prefix, i)
			data, _ := json.Marshal(mailReq(id))
			f, err := js.PublishAsync("mail.send", data, jetstream.WithMsgID(id))
			if err != nil {
				l.mu.Lock()
				l.unacked = append(l.unacked, id)
				l.mu.Unlock()
				continue
			}
			l.futures <- pending{id, f}
		}
	})
	l.wg.Go(func() {
		for p := range l.futures {
			var ok bool
			select {
			case <-p.f.Ok():
				ok = true
			case <-p.f.Err():
			}
			l.mu.Lock()
			if ok {
				l.acked = append(l.acked, p.id)
			} else {
				l.unacked = append(l.unacked, p.id)
			}
			l.mu.Unlock()
		}
	})
	t.Cleanup(l.stop)
	return l
}

// count is how many publishes were acknowledged so far.
func (l *load) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// stop ends the load and waits for every answer.
func (l *load) stop() {
	select {
	case <-l.stopped:
	default:
		close(l.stopped)
	}
	l.wg.Wait()
}

// finish stops the load, publishes again the requests that got no
// acknowledgement (with the same Nats-Msg-Id, so JetStream keeps one), and
// returns every Id, and how many had to be published again.
func (l *load) finish(t *testing.T) (ids []string, republished int) {
	t.Helper()
	l.stop()
	for _, id := range l.unacked {
		data, _ := json.Marshal(mailReq(id))
		jstest.Publish(t, l.js, "", data, id)
	}
	return append(append([]string(nil), l.acked...), l.unacked...), len(l.unacked)
}

// procWorker starts a worker on its own connection to url (reconnecting
// for ever, with opts), sending to srv.
func procWorker(t *testing.T, url string, srv *smtptest.Server, concurrency int, opts ...nats.Option) *testBundle {
	t.Helper()
	b := &testBundle{}
	b.nc, b.js = jstest.Connect(t, url, opts...)
	b.startWorker(t, Config{
		Concurrency: concurrency, AckWait: 5 * time.Second, Retry: fastRetry(8),
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
	})
	return b
}

// finishFault waits until every one of ids has its final result in the
// result stream and the worker is idle, then checks what a user sees: one
// final sent result each, accepted first, each message at the SMTP server,
// and the metrics agree with the server. It returns the duplicates at the
// SMTP server and when the last final result was seen.
func finishFault(t *testing.T, b *testBundle, js jetstream.JetStream, srv *smtptest.Server, ids []string, within time.Duration) (dups int, finalAt time.Time) {
	t.Helper()
	l := jstest.StoredResults(t, js, "")
	l.FinalsAtLeast(t, len(ids), within)
	finalAt = time.Now()
	waitIdle(t, js)
	dups = checkExactlyOnce(t, l, srv, ids)
	checkAcceptedFirst(t, l, ids)
	sent := testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200"))
	ok := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "ok"))
	if int(sent) != len(ids) {
		t.Errorf("jetmail_results_total{state=sent} = %v, want %d", sent, len(ids))
	}
	if int(ok) != srv.MessageCount() {
		t.Errorf("jetmail_smtp_attempts_total{outcome=ok} = %v, the SMTP server holds %d messages", ok, srv.MessageCount())
	}
	return dups, finalAt
}

// TestNATSServerSIGKILL kills nats-server with SIGKILL while requests flow
// in and a worker delivers them, and starts it again on the same store:
// every request JetStream acknowledged before, during or after the kill
// ends with exactly one final result, and the worker catches up by itself.
func TestNATSServerSIGKILL(t *testing.T) {
	t.Parallel()
	p := jstest.StartProc(t, jstest.ProcOptions{})
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 10 * time.Millisecond}) // deliveries in flight at the kill
	const concurrency = 8
	b := procWorker(t, p.URL(), srv, concurrency)
	probe := newProbe(t, b.worker)
	_, js := jstest.Connect(t, p.URL())

	// Faster than the worker delivers: a backlog waits in the stream too.
	ld := startLoad(t, p.URL(), "kill", 2*time.Millisecond)
	jstest.Eventually(t, 20*time.Second, func() bool { return ld.count() >= 500 && srv.MessageCount() >= 200 })
	inflight := testutil.ToFloat64(b.worker.metrics.Inflight)
	atKill, ackedAtKill := srv.MessageCount(), ld.count()
	p.Kill()
	jstest.Eventually(t, 10*time.Second, func() bool { return !b.worker.Ready() && probe.readyz(t) == http.StatusServiceUnavailable })
	time.Sleep(2 * time.Second) // publishes and deliveries meet a dead server
	p.Start()
	restarted := time.Now()
	jstest.Eventually(t, 30*time.Second, b.worker.Ready)
	readyAfter := time.Since(restarted)
	jstest.Eventually(t, 20*time.Second, func() bool { return ld.count() >= ackedAtKill+200 }) // load after the restart
	ids, again := ld.finish(t)

	if inflight == 0 || atKill >= len(ids) {
		t.Fatalf("nothing was in flight at the kill (%v held, %d of %d sent)", inflight, atKill, len(ids))
	}
	dups, finalAt := finishFault(t, b, js, srv, ids, 2*time.Minute)
	t.Logf("SIGKILL of nats-server after %d acknowledged requests (%d sent, %.0f in flight): ready %v after the restart; %d requests in all, %d published again; all final %v after the restart; %d duplicates",
		ackedAtKill, atKill, inflight, readyAfter.Round(time.Millisecond), len(ids), again, finalAt.Sub(restarted).Round(time.Millisecond), dups)
}

// TestNATSServerFrozen stops nats-server with SIGSTOP for 12 s (20 s with
// JETMAIL_FAULTS=1), longer than the test's AckWait, while the worker
// delivers a batch, then lets it go on with SIGCONT. The TCP connections
// stay up and the client does not notice (its pings come every 2 min), but
// nothing answers: the worker must say it is not ready, keep what it
// holds, get unstuck by itself, and lose and duplicate nothing. The short
// freeze behaves as the long one: both outlast AckWait (5 s) and the 5 s
// readiness look-ups, and neither reaches the client's ping timeout.
func TestNATSServerFrozen(t *testing.T) {
	t.Parallel()
	freeze := faultLength(t, 12*time.Second, 20*time.Second, "JETMAIL_FREEZE")
	p := jstest.StartProc(t, jstest.ProcOptions{})
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 20 * time.Millisecond})
	const concurrency = 8
	b := procWorker(t, p.URL(), srv, concurrency)
	probe := newProbe(t, b.worker)
	_, js := jstest.Connect(t, p.URL())

	const n = 400
	ids := publishBatch(t, js, "frz", n)
	waitMessages(t, srv, n/4)
	stopWatch := probe.watch(t)
	p.Freeze()
	frozen := time.Now()
	atFreeze := srv.MessageCount()
	time.Sleep(time.Until(frozen.Add(freeze)))
	inflight := testutil.ToFloat64(b.worker.metrics.Inflight)
	p.Thaw()
	thawed := time.Now()
	jstest.Eventually(t, 30*time.Second, func() bool { return probe.readyz(t) == http.StatusOK && probe.gauge() == 1 })
	readyAfter := time.Since(thawed)
	r := stopWatch()
	if !r.saw503 || !r.saw0 {
		t.Errorf("during the %s freeze: /readyz 503 seen %v, jetmail_ready 0 seen %v; want both", freeze, r.saw503, r.saw0)
	}
	if !b.nc.IsConnected() || b.nc.Stats().Reconnects != 0 {
		t.Logf("the client reconnected %d times: the freeze was not silent", b.nc.Stats().Reconnects)
	}
	if atFreeze >= n || inflight == 0 {
		t.Fatalf("the freeze came after the batch (%d of %d sent, %v held)", atFreeze, n, inflight)
	}
	dups, finalAt := finishFault(t, b, js, srv, ids, 2*time.Minute)
	notReadyAfter := "-"
	if r.saw503 {
		notReadyAfter = r.first503.Sub(frozen).Round(100 * time.Millisecond).String()
	}
	t.Logf("froze nats-server for %s after %d of %d messages (%.0f held): not ready %s after the freeze, ready %v after the thaw, all final %v after; %d duplicates",
		freeze, atFreeze, n, inflight, notReadyAfter, readyAfter.Round(time.Millisecond), finalAt.Sub(thawed).Round(time.Millisecond), dups)
}

// TestNetworkPartition runs nats-server in a network namespace of its own
// and cuts it off from the worker with an nftables rule that drops every
// packet (no reset, no error: a silent partition) for 10 s (90 s with
// JETMAIL_FAULTS=1) while a batch is delivered, then heals it. Two
// workers' NATS clients: one with the default pings (every 2 min, so the
// connection outlives the partition, as in production with a short one),
// one with pings every second (so it gives the connection up and
// reconnects after the heal, as in production with a partition longer
// than the ping timeout of 4 to 6 min). Either way nothing is lost, the
// worker says it is not ready meanwhile and catches up by itself.
func TestNetworkPartition(t *testing.T) {
	t.Parallel()
	cut := faultLength(t, 10*time.Second, 90*time.Second, "JETMAIL_PARTITION")
	for _, tc := range []struct {
		name string
		opts []nats.Option
	}{
		{"default pings", nil},
		{"pings every second", []nats.Option{nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := jstest.NewNetNS(t)
			p := jstest.StartProc(t, jstest.ProcOptions{Host: ns.NSAddr, Wrap: ns.Exec()})
			srv := smtptest.NewServer(t)
			srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 20 * time.Millisecond})
			const concurrency = 8
			b := procWorker(t, p.URL(), srv, concurrency, tc.opts...)
			probe := newProbe(t, b.worker)
			_, js := jstest.Connect(t, p.URL())

			const n = 400
			ids := publishBatch(t, js, "part", n)
			waitMessages(t, srv, n/4)
			stopWatch := probe.watch(t)
			ns.Cut()
			healed := false
			t.Cleanup(func() {
				if !healed {
					ns.Heal()
				}
			})
			start := time.Now()
			atCut := srv.MessageCount()
			time.Sleep(time.Until(start.Add(cut)))
			inflight := testutil.ToFloat64(b.worker.metrics.Inflight)
			duringCut := srv.MessageCount() - atCut
			ns.Heal()
			healed = true
			healedAt := time.Now()
			jstest.Eventually(t, 60*time.Second, func() bool { return probe.readyz(t) == http.StatusOK && probe.gauge() == 1 })
			readyAfter := time.Since(healedAt)
			r := stopWatch()
			if !r.saw503 || !r.saw0 {
				t.Errorf("during the %s partition: /readyz 503 seen %v, jetmail_ready 0 seen %v; want both", cut, r.saw503, r.saw0)
			}
			if atCut >= n || inflight == 0 {
				t.Fatalf("the partition came after the batch (%d of %d sent, %v held)", atCut, n, inflight)
			}
			if duringCut > 2*concurrency {
				t.Errorf("%d messages sent during the partition, more than the worker held", duringCut)
			}
			dups, finalAt := finishFault(t, b, js, srv, ids, 3*time.Minute)
			t.Logf("partition of %s after %d of %d messages (%.0f held, %d sent during it): ready %v after the heal, all final %v after; %d reconnects, %d duplicates",
				cut, atCut, n, inflight, duringCut, readyAfter.Round(time.Millisecond), finalAt.Sub(healedAt).Round(time.Millisecond), b.nc.Stats().Reconnects, dups)
		})
	}
}
