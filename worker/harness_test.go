package worker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsserver "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/schema"
)

// startJetStream runs a real JetStream server in-process on a free port
// with its store in a temporary folder.
func startJetStream(t testing.TB) *server.Server {
	t.Helper()
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	s := natsserver.RunServer(&opts)
	t.Cleanup(s.Shutdown)
	return s
}

// connect opens a client connection closed at cleanup.
func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// testBundle is what most worker tests need: a JetStream server, a client,
// a running worker with its own registry, and a subscription to every
// result event.
type testBundle struct {
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	worker  *Worker
	reg     *prometheus.Registry
	results *resultLog
	stop    func() // stops the worker and waits for Run to return
}

// testLogger logs to the test output when -v and JETMAIL_TEST_LOG are set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("JETMAIL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// setup starts a server and a worker with cfg (fast retries unless set).
func setup(t testing.TB, cfg Config) *testBundle {
	t.Helper()
	b := &testBundle{srv: startJetStream(t)}
	b.nc, b.js = connect(t, b.srv.ClientURL())
	b.results = watchResults(t, b.nc, cfg.Names.WithPrefix("mail").Prefix)
	b.startWorker(t, cfg)
	return b
}

func (b *testBundle) startWorker(t testing.TB, cfg Config) {
	t.Helper()
	if cfg.Outbox == "" && len(cfg.Connections) == 0 {
		cfg.Outbox = t.TempDir()
	}
	if cfg.Retry.Initial == 0 {
		cfg.Retry = RetryPolicy{Initial: 50 * time.Millisecond, Multiplier: 2, MaxInterval: 200 * time.Millisecond, MaxAttempts: 5, MaxAge: time.Hour}
	}
	if cfg.GracePeriod == 0 {
		cfg.GracePeriod = 5 * time.Second
	}
	b.reg = prometheus.NewRegistry()
	w, err := New(cfg, b.js, b.reg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b.worker = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("worker Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("worker did not stop within 30s")
			}
		})
	}
	t.Cleanup(b.stop)
	// Wait until the consumer exists so publishes are not lost to a
	// missing stream.
	waitFor(t, 10*time.Second, func() bool { return w.Ready() })
}

// waitFor polls cond; the last resort where no event can be awaited.
func waitFor(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// resultLog records every result event seen on mail.result.> (core NATS
// subscription, so it sees events as they are published).
type resultLog struct {
	mu     sync.Mutex
	cond   *sync.Cond
	byID   map[string][]schema.Result
	count  int
	finals int
}

func watchResults(t testing.TB, nc *nats.Conn, prefix string) *resultLog {
	t.Helper()
	l := &resultLog{byID: map[string][]schema.Result{}}
	l.cond = sync.NewCond(&l.mu)
	sub, err := nc.Subscribe(prefix+".result.>", func(m *nats.Msg) {
		var r schema.Result
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("result not JSON: %v: %s", err, m.Data)
			return
		}
		l.mu.Lock()
		l.byID[r.Id] = append(l.byID[r.Id], r)
		l.count++
		if r.Final() {
			l.finals++
		}
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	// A test must never miss an event because it was slow to read.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// waitUntil blocks until cond (called with the lock held) is true or the
// timeout passes.
func (l *resultLog) waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	timer := time.AfterFunc(d, func() { l.mu.Lock(); l.cond.Broadcast(); l.mu.Unlock() })
	defer timer.Stop()
	deadline := time.Now().Add(d)
	l.mu.Lock()
	defer l.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		l.cond.Wait()
	}
}

// final waits for the final result of id and returns every event of it.
func (l *resultLog) final(t testing.TB, id string) (schema.Result, []schema.Result) {
	t.Helper()
	var fin schema.Result
	l.waitUntil(t, 20*time.Second, "final result of "+id, func() bool {
		for _, r := range l.byID[id] {
			if r.Final() {
				fin = r
				return true
			}
		}
		return false
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return fin, append([]schema.Result(nil), l.byID[id]...)
}

// finalsAtLeast waits until n final events were seen.
func (l *resultLog) finalsAtLeast(t testing.TB, n int, d time.Duration) {
	t.Helper()
	l.waitUntil(t, d, "final results", func() bool { return l.finals >= n })
}

// publish sends a request as a producer would: JSON with Nats-Msg-Id.
func (b *testBundle) publish(t testing.TB, req any, id string) {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	b.publishRaw(t, data, id)
}

func (b *testBundle) publishRaw(t testing.TB, data []byte, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := nats.NewMsg("mail.send")
	m.Data = data
	if id != "" {
		m.Header.Set(jetstream.MsgIDHeader, id)
	}
	if _, err := b.js.PublishMsg(ctx, m); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			t.Fatalf("publish: %v (%d)", apiErr, apiErr.ErrorCode)
		}
		t.Fatalf("publish: %v", err)
	}
}
