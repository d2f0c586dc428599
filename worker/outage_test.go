package worker

// Tests of a NATS server that is away for long: the worker keeps trying,
// says it is not ready (/readyz 503, jetmail_ready 0), keeps what it holds,
// and catches up once the server is back, without being restarted.
//
// CI runs an 8 s outage. The 90 s one (longer than AckWait, than the
// 30 s a result publish is tried for, and than the worker's default
// AckWait of 60 s) runs with
//
//	JETMAIL_FAULTS=1 go test -run '^TestNATSOutage$' -v -timeout 10m ./worker/
//
// JETMAIL_OUTAGE=3m sets another length.

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// longFaults reports whether the long versions of the fault tests were
// asked for (JETMAIL_FAULTS=1, and not -short).
func longFaults() bool { return os.Getenv("JETMAIL_FAULTS") == "1" && !testing.Short() }

// faultLength is short in CI and long with JETMAIL_FAULTS=1; env, when
// set, overrides the long one.
func faultLength(t testing.TB, short, long time.Duration, env string) time.Duration {
	t.Helper()
	if !longFaults() {
		return short
	}
	if v := os.Getenv(env); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q is not a positive duration", env, v)
		}
		return d
	}
	return long
}

// probe asks a worker's /readyz over HTTP and reads jetmail_ready, as a
// Kubernetes probe and Prometheus would.
type probe struct {
	url string
	w   *Worker
}

func newProbe(t testing.TB, w *Worker) *probe {
	srv := httptest.NewServer(w.Handler())
	t.Cleanup(srv.Close)
	return &probe{url: srv.URL, w: w}
}

// readyz is the status code of GET /readyz.
func (p *probe) readyz(t testing.TB) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("GET /readyz: %v", err)
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// gauge is jetmail_ready.
func (p *probe) gauge() float64 { return testutil.ToFloat64(p.w.metrics.Ready) }

// watchReadiness samples /readyz and jetmail_ready every 100 ms until the
// returned function is called, which reports what was seen: whether
// /readyz answered 503 and the gauge read 0 at some point, and from when
// until when the worker was not ready.
type readiness struct {
	saw503, saw0   bool
	first503, last time.Time
}

func (p *probe) watch(t testing.TB) (stop func() readiness) {
	var (
		mu   sync.Mutex
		r    readiness
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			code, g := p.readyz(t), p.gauge()
			mu.Lock()
			if code == http.StatusServiceUnavailable {
				if !r.saw503 {
					r.first503 = time.Now()
				}
				r.saw503, r.last = true, time.Now()
			}
			if g == 0 {
				r.saw0 = true
			}
			mu.Unlock()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stop = func() readiness {
		once.Do(func() { close(done); wg.Wait() })
		mu.Lock()
		defer mu.Unlock()
		return r
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestNATSOutage takes the JetStream server away for a long time (8 s in
// CI, 90 s with JETMAIL_FAULTS=1) while a worker is mid-batch, then brings
// it back on the same port and store. Meanwhile the worker must say it is
// not ready (/readyz 503 and jetmail_ready 0), keep trying and not exit;
// afterwards it must be ready again and finish the batch by itself: every
// request JetStream acknowledged ends with exactly one final result in the
// result stream, each message reaches the SMTP server, and the metrics
// agree with the server. Duplicates are counted, not hidden.
func TestNATSOutage(t *testing.T) {
	t.Parallel()
	outage := faultLength(t, 8*time.Second, 90*time.Second, "JETMAIL_OUTAGE")
	nats := jstest.Start(t)
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 20 * time.Millisecond}) // slower than publishing: mid-batch when NATS goes
	const concurrency = 8
	b := &testBundle{srv: nats.NATS()}
	b.nc, b.js = nats.Connect(t)
	b.startWorker(t, Config{
		Concurrency: concurrency, AckWait: 5 * time.Second, Retry: fastRetry(8),
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
	})
	p := newProbe(t, b.worker)
	_, pubJS := nats.Connect(t)

	const n = 400
	ids := publishBatch(t, pubJS, "out", n)
	waitMessages(t, srv, n/4)
	if code := p.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz answered %d before the outage, want 200", code)
	}
	stopWatch := p.watch(t)

	nats.Shutdown()
	down := time.Now()
	atDown := srv.MessageCount()
	// While NATS is away the worker holds what it had taken and cannot
	// settle it: the fault reaches messages in flight.
	jstest.Eventually(t, 10*time.Second, func() bool { return !b.worker.Ready() })
	heldDuring := testutil.ToFloat64(b.worker.metrics.Inflight)
	time.Sleep(time.Until(down.Add(outage)))
	duringOutage := srv.MessageCount() - atDown
	r := stopWatch()
	if !r.saw503 || !r.saw0 {
		t.Errorf("during the %s outage: /readyz 503 seen %v, jetmail_ready 0 seen %v; want both", outage, r.saw503, r.saw0)
	}
	if code := p.readyz(t); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d at the end of the outage, want 503", code)
	}

	nats.Restart()
	up := time.Now()
	jstest.Eventually(t, 30*time.Second, b.worker.Ready)
	readyAfter := time.Since(up)
	jstest.Eventually(t, 30*time.Second, func() bool { return p.readyz(t) == http.StatusOK && p.gauge() == 1 })

	l := jstest.StoredResults(t, pubJS, "")
	l.FinalsAtLeast(t, n, 3*time.Minute)
	caughtUp := time.Since(up)
	waitIdle(t, pubJS)
	checkWatchesBack(t, b.worker, pubJS)
	if atDown >= n {
		t.Fatalf("the whole batch was delivered before the outage (%d messages): the fault did not happen mid-batch", atDown)
	}
	if heldDuring == 0 {
		t.Errorf("the worker held no message during the outage: the fault reached nothing in flight")
	}
	// Nothing can be accepted without NATS: at most what the worker had
	// already begun goes out during the outage.
	if duringOutage > 2*concurrency {
		t.Errorf("%d messages reached the SMTP server during the outage, more than the worker held", duringOutage)
	}
	dups := checkExactlyOnce(t, l, srv, ids)
	checkAcceptedFirst(t, l, ids)
	sent := testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200"))
	ok := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "ok"))
	if int(sent) != n {
		t.Errorf("jetmail_results_total{state=sent} = %v, want %d", sent, n)
	}
	if int(ok) != srv.MessageCount() {
		t.Errorf("jetmail_smtp_attempts_total{outcome=ok} = %v, the SMTP server holds %d messages", ok, srv.MessageCount())
	}
	if dups > 2*concurrency {
		t.Errorf("%d duplicates at the SMTP server, more than the %d messages the worker can hold", dups, 2*concurrency)
	}
	t.Logf("outage of %s after %d of %d messages (%.0f held, %d sent during it): ready %v after NATS returned, all final %v after; %d duplicates, %d events stored",
		outage, atDown, n, heldDuring, duringOutage, readyAfter.Round(time.Millisecond), caughtUp.Round(time.Millisecond), dups, l.Count())
}

// checkAcceptedFirst checks that each of ids got accepted as its first
// stored event: a user sees accepted before the first SMTP attempt even
// when the first delivery of the request was lost with a connection.
func checkAcceptedFirst(t *testing.T, l *jstest.Results, ids []string) {
	t.Helper()
	bad := 0
	for _, id := range ids {
		if ev := l.Events(id); len(ev) == 0 || ev[0].State != schema.StateAccepted {
			if bad++; bad <= 5 {
				t.Errorf("%s: events %v, want accepted first", id, states(ev))
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d messages in all without accepted first", bad)
	}
}

// checkWatchesBack checks that the worker's watches of the cancellation
// marks and of the suppression list work after the fault: a message
// cancelled or an address suppressed now is seen by the worker.
func checkWatchesBack(t *testing.T, w *Worker, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "JETMAIL_CANCELLED")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "id.after-the-fault", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.suppressions.Add(ctx, suppress.Entry{Address: "after-the-fault@example.com", Reason: suppress.Manual}, 0); err != nil {
		t.Fatal(err)
	}
	jstest.Eventually(t, 15*time.Second, func() bool {
		_, suppressed := w.checker.Check("after-the-fault@example.com", schema.LaneNormal, false)
		return w.cancels.cancelled("after-the-fault", "") && suppressed
	})
}
