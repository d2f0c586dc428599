package httpapi

import (
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// testBundle is a JetStream server, a client, a running worker that
// serves the API as `jetmail worker` does, and a subscription to every
// result event.
type testBundle struct {
	nats    *jstest.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	worker  *worker.Worker
	results *jstest.Results
}

// testLogger logs to stderr when JETMAIL_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("JETMAIL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// setup starts a JetStream server and a worker with cfg whose HTTP handler
// serves the API with the given bearer tokens.
func setup(t testing.TB, cfg worker.Config, tokens ...string) *testBundle {
	t.Helper()
	return setupOn(t, jstest.Start(t), cfg, tokens...)
}

// setupOn is setup on a given server.
func setupOn(t testing.TB, srv *jstest.Server, cfg worker.Config, tokens ...string) *testBundle {
	t.Helper()
	b := &testBundle{nats: srv}
	b.nc, b.js = srv.Connect(t)
	b.results = jstest.WatchResults(t, b.nc, "mail")
	if cfg.Outbox == "" && len(cfg.Connections) == 0 {
		cfg.Outbox = t.TempDir()
	}
	if cfg.Retry.Initial == 0 {
		cfg.Retry = worker.RetryPolicy{Initial: 50 * time.Millisecond, Multiplier: 2, MaxInterval: 200 * time.Millisecond, MaxAttempts: 5, MaxAge: time.Hour}
	}
	adm, err := config.NewAdmission(cfg.Limits, cfg.Templates, cfg.Connections)
	if err != nil {
		t.Fatal(err)
	}
	api, err := New(Config{Names: cfg.Names, Admission: adm, Tokens: tokens}, b.js, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	cfg.API = api.Handler()
	cfg.HTTPAddr = ""
	w, err := worker.New(cfg, b.js, prometheus.NewRegistry(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	b.worker = w
	jstest.Serve(t, w.Run, w.Ready)
	return b
}

// smtpBundle is setup with the default connection pointed at srv.
func smtpBundle(t testing.TB, srv *smtptest.Server, cfg worker.Config, tokens ...string) *testBundle {
	t.Helper()
	conn := cfg.Connections["default"]
	conn.URL = srv.URL()
	if conn.From == "" {
		conn.From = "noreply@example.com"
	}
	if cfg.Connections == nil {
		cfg.Connections = map[string]config.SMTP{}
	}
	cfg.Connections["default"] = conn
	return setup(t, cfg, tokens...)
}

// publishRaw publishes a payload on mail.send with Nats-Msg-Id id, as a
// producer would.
func (b *testBundle) publishRaw(t testing.TB, data []byte, id string) {
	t.Helper()
	jstest.Publish(t, b.js, "", data, id)
}

// serveWorker serves a worker's Handler (metrics, health and the API).
func serveWorker(t testing.TB, b *testBundle) string {
	t.Helper()
	srv := httptest.NewServer(b.worker.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// serveAPI serves a standalone API, as `jetmail gateway` does.
func serveAPI(t testing.TB, cfg Config, js jetstream.JetStream, logger *slog.Logger) string {
	t.Helper()
	api, err := New(cfg, js, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}
