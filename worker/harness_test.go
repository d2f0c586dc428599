package worker

import (
	"encoding/json"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/internal/jstest"
)

// testBundle is what most worker tests need: a JetStream server, a client,
// a running worker with its own registry, and a subscription to every
// result event.
type testBundle struct {
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	worker  *Worker
	reg     *prometheus.Registry
	results *jstest.Results
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
	b := &testBundle{srv: jstest.Start(t).NATS()}
	b.nc, b.js = jstest.Connect(t, b.srv.ClientURL())
	b.results = jstest.WatchResults(t, b.nc, cfg.Names.WithPrefix("mail").Prefix)
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
	// Wait until the consumer exists so publishes are not lost to a
	// missing stream.
	b.stop = jstest.Serve(t, w.Run, w.Ready)
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
	jstest.Publish(t, b.js, "", data, id)
}
