package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/dkim"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/tracing"
)

// Config is everything a worker needs, as data. DefaultConfig holds the
// defaults (the command line takes its flags' defaults from it); a zero
// field of a Config given to New takes its default, except where a field
// says otherwise. New names each bad field.
type Config struct {
	// Names are the subjects, streams and consumer. Zero names take the
	// contract's defaults.
	Names schema.Names
	// Connections are the named SMTP connections; requests without a
	// Connection use "default". Empty means the file transport: every
	// message is written as <Id>.eml into Outbox.
	Connections map[string]config.SMTP
	// Outbox is the folder of the file transport. Default "./outbox".
	Outbox string
	// Concurrency is the number of deliveries in flight. Default 64: a
	// delivery spends most of its time waiting for NATS and the relay, and
	// the SMTP sessions are bounded by each connection's PoolSize, not by
	// this.
	Concurrency int
	// MaxInflightBytes bounds the memory the deliveries in flight hold,
	// counted as four times each request's size: large requests wait for
	// room. Default 256 MiB; at least Limits.MaxRequestBytes.
	MaxInflightBytes int
	// Prefetch is how many messages the client buffers ahead of the
	// handlers, split between the three lanes. Zero means Concurrency.
	// Keep it small: a buffered message's AckWait runs while it waits.
	Prefetch int
	// LaneShare is the least share of the deliveries that a lane with
	// requests waiting gets while more urgent lanes have work too
	// (contract §7). Default 0.1; it must be below 0.5.
	LaneShare float64
	// Retry is the retry policy; zero fields take DefaultRetryPolicy's.
	Retry RetryPolicy
	// GracePeriod is how long a stopping worker lets in-flight deliveries
	// finish before it cancels them and returns them to the stream.
	// Default 30s.
	GracePeriod time.Duration
	// AckWait is how long JetStream waits for an acknowledgement before it
	// redelivers. In-flight deliveries send progress acks every AckWait/3.
	// Default 60s.
	AckWait time.Duration
	// MaxAckPending bounds the messages held by workers or waiting for a
	// retry at once (a JetStream consumer setting). Default 100000.
	MaxAckPending int
	// Replicas is the replica count of the streams the worker creates.
	// Default 1; use 3 on a cluster.
	Replicas int
	// DuplicateWindow is the request stream's Nats-Msg-Id dedup window.
	// Default 1h.
	DuplicateWindow time.Duration
	// ResultMaxAge is how long result events are kept. Default 7 days.
	ResultMaxAge time.Duration
	// DeadMaxAge is how long dead letters are kept. Default 30 days.
	DeadMaxAge time.Duration
	// Limits bound requests; zero fields take schema.DefaultLimits()'s.
	Limits schema.Limits
	// Templates is a folder of message templates (NAME.subject.tmpl,
	// NAME.text.tmpl, NAME.html.tmpl) that requests name with Template.
	// Empty means none.
	Templates string
	// HTTPAddr is where /metrics, /healthz, /readyz and API are served.
	// DefaultConfig has ":8080"; empty means no HTTP server (the caller
	// may serve Handler itself).
	HTTPAddr string
	// API, when set, is served by the worker's HTTP server for every path
	// but /metrics, /healthz and /readyz: the HTTP API and the console
	// (packages httpapi and console), which the command line builds.
	API http.Handler
	// Gatherer serves /metrics. Default: the registerer given to New when
	// it is also a Gatherer (a *prometheus.Registry), else nothing is
	// served unless it is set.
	Gatherer prometheus.Gatherer
	// Tracer makes the spans of the deliveries (contract §12). Default:
	// the global provider's (tracing.Tracer), a no-op one unless
	// tracing.Setup installed an exporter.
	Tracer trace.Tracer
	// Suppressions is the suppression list (contract §9). Nil: Run opens
	// the store of Names, with Replicas and SuppressBounceTTL.
	Suppressions *suppress.Store
	// SuppressBounceTTL is how long a bounce entry applies once a server
	// refused a recipient as unknown. Default 30 days.
	SuppressBounceTTL time.Duration
	// PublicURL is the base URL at which recipients reach this service's
	// HTTP API, such as "https://mail.example.com": the one-click
	// unsubscribe links are PublicURL + "/v1/unsubscribe/" + token. It
	// needs Unsubscribe; without both, requests with "Unsubscribe": true
	// are invalid (400).
	PublicURL string
	// Unsubscribe makes the one-click unsubscribe tokens (from
	// --unsubscribe-secret-file). See PublicURL.
	Unsubscribe *suppress.Tokens
	// Metrics, when set, are the collectors to use, registered by the
	// caller, so that an HTTP API served beside the worker counts into the
	// same ones (its cancellations in jetmail_cancelled_total). Nil: New
	// makes them and registers them on its registerer.
	Metrics *Metrics
	// HeartbeatInterval is how often a running worker publishes its
	// schema.Heartbeat on Names.HeartbeatSubject (core NATS), for the web
	// console's list of workers. Default 5s; negative means none.
	HeartbeatInterval time.Duration
}

// DefaultConfig returns the configuration of the contract's defaults.
func DefaultConfig() Config {
	return Config{
		Names:             schema.DefaultNames(),
		Outbox:            "./outbox",
		Concurrency:       64,
		MaxInflightBytes:  256 << 20,
		LaneShare:         0.1,
		Retry:             DefaultRetryPolicy(),
		GracePeriod:       30 * time.Second,
		AckWait:           60 * time.Second,
		MaxAckPending:     100000,
		Replicas:          1,
		DuplicateWindow:   time.Hour,
		ResultMaxAge:      7 * 24 * time.Hour,
		DeadMaxAge:        30 * 24 * time.Hour,
		SuppressBounceTTL: suppress.DefaultBounceTTL,
		Limits:            schema.DefaultLimits(),
		HTTPAddr:          ":8080",
		HeartbeatInterval: 5 * time.Second,
	}
}

// LogValue lists the configuration for logs, with SMTP passwords redacted.
func (c Config) LogValue() slog.Value {
	conns := make([]any, 0, len(c.Connections))
	for name, sc := range c.Connections {
		conns = append(conns, slog.String(name, config.RedactURL(sc.URL)))
	}
	return slog.GroupValue(
		slog.String("prefix", c.Names.Prefix),
		slog.Group("connections", conns...),
		slog.String("outbox", c.Outbox),
		slog.Int("concurrency", c.Concurrency),
		slog.Duration("retry_initial", c.Retry.Initial),
		slog.Int("max_attempts", c.Retry.MaxAttempts),
		slog.Duration("max_age", c.Retry.MaxAge),
		slog.Duration("grace_period", c.GracePeriod),
		slog.Int("replicas", c.Replicas),
		slog.String("http_addr", c.HTTPAddr),
	)
}

// withDefaults returns a copy of c with zero fields set to DefaultConfig's.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.Names = c.Names.WithDefaults()
	str := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	num := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	dur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	str(&c.Outbox, d.Outbox)
	num(&c.Concurrency, d.Concurrency)
	num(&c.MaxInflightBytes, d.MaxInflightBytes)
	num(&c.Prefetch, c.Concurrency)
	if c.LaneShare == 0 {
		c.LaneShare = d.LaneShare
	}
	c.Retry = c.Retry.withDefaults()
	dur(&c.GracePeriod, d.GracePeriod)
	dur(&c.AckWait, d.AckWait)
	num(&c.MaxAckPending, d.MaxAckPending)
	num(&c.Replicas, d.Replicas)
	dur(&c.DuplicateWindow, d.DuplicateWindow)
	dur(&c.ResultMaxAge, d.ResultMaxAge)
	dur(&c.DeadMaxAge, d.DeadMaxAge)
	dur(&c.SuppressBounceTTL, d.SuppressBounceTTL)
	dur(&c.HeartbeatInterval, d.HeartbeatInterval)
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	c.Limits = c.Limits.WithDefaults()
	return c
}

// FieldError is a bad setting of a Config, named by its field, so that the
// command line can name the flag that sets it.
type FieldError struct {
	// Field is the Config field, such as "Concurrency" or "Retry.Initial".
	Field string
	// Err says what is wrong with it.
	Err error
}

// Error returns "Field: what is wrong".
func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns what is wrong.
func (e *FieldError) Unwrap() error { return e.Err }

// Validate returns an error naming every bad field of c (after defaults),
// each a *FieldError, joined; nil when c is usable. New calls it.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Err: fmt.Errorf(format, args...)})
	}
	if !schema.ValidToken(c.Names.Prefix) {
		bad("Names.Prefix", "%q is not a single NATS token", c.Names.Prefix)
	}
	if c.Concurrency < 1 {
		bad("Concurrency", "must be at least 1, got %d", c.Concurrency)
	}
	if c.MaxInflightBytes < 1<<20 {
		bad("MaxInflightBytes", "must be at least 1 MiB, got %d", c.MaxInflightBytes)
	}
	if c.Prefetch < 1 {
		bad("Prefetch", "must be at least 1, got %d", c.Prefetch)
	}
	if c.LaneShare <= 0 || c.LaneShare >= 0.5 {
		bad("LaneShare", "must be above 0 and below 0.5, got %g", c.LaneShare)
	}
	errs = append(errs, c.Retry.validate()...)
	if c.GracePeriod < 0 {
		bad("GracePeriod", "must not be negative, got %s", c.GracePeriod)
	}
	if c.AckWait < time.Second {
		bad("AckWait", "must be at least 1s, got %s", c.AckWait)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		bad("Replicas", "must be between 1 and 5, got %d", c.Replicas)
	}
	for _, l := range []struct {
		field string
		v     int
	}{
		{"Limits.MaxRequestBytes", c.Limits.MaxRequestBytes}, {"Limits.MaxAttachmentBytes", c.Limits.MaxAttachmentBytes},
		{"Limits.MaxRecipients", c.Limits.MaxRecipients}, {"Limits.MaxHeaders", c.Limits.MaxHeaders},
		{"Limits.MaxHeaderLength", c.Limits.MaxHeaderLength},
	} {
		if l.v < -1 {
			bad(l.field, "must be positive, or -1 for no limit, got %d", l.v)
		}
	}
	if c.SuppressBounceTTL < time.Minute {
		bad("SuppressBounceTTL", "must be at least 1m, got %s", c.SuppressBounceTTL)
	}
	if (c.PublicURL == "") != (c.Unsubscribe == nil) {
		bad("PublicURL", "the one-click unsubscribe needs both a public URL and an unsubscribe secret")
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			bad("PublicURL", "%q is not an http(s) URL without query", c.PublicURL)
		}
	}
	for name, sc := range c.Connections {
		if !schema.ValidToken(name) {
			bad("Connections", "connection name %q is not valid", name)
			continue
		}
		if err := sc.Validate(); err != nil {
			bad("Connections", "connection %q: %s", name, config.Scrub(err.Error(), sc.Password))
		}
	}
	return errors.Join(errs...)
}

// streams is the JetStream topology of this configuration.
func (c Config) streams() config.Streams {
	return config.Streams{
		Names:           c.Names,
		Replicas:        c.Replicas,
		DuplicateWindow: c.DuplicateWindow,
		ResultMaxAge:    c.ResultMaxAge,
		DeadMaxAge:      c.DeadMaxAge,
		AckWait:         c.AckWait,
		// MaxAttempts is enforced in code; this is a backstop a few
		// deliveries above it, so the server never stops redelivering
		// before a final event is published.
		MaxDeliver:    c.Retry.MaxAttempts + 3,
		MaxAckPending: c.MaxAckPending,
	}
}

// Worker consumes send requests from JetStream and delivers them. It owns
// every goroutine it starts; Run returns only when all have stopped.
type Worker struct {
	cfg       Config
	js        jetstream.JetStream
	metrics   *Metrics
	gatherer  prometheus.Gatherer
	log       *slog.Logger
	transport Transport
	smtp      *SMTPTransport // nil with the file transport
	admission *config.Admission
	dkim      map[string]*DKIMSigner    // by connection
	targets   map[string]*config.Target // by connection, for the spans
	tracer    trace.Tracer
	now       func() time.Time
	id        string // this run's heartbeat Id

	suppressions *suppress.Store   // the suppression list, opened by Run unless given
	checker      *suppress.Checker // its in-memory copy, for the hot path
	results      jetstream.Stream  // for dedupe look-ups (direct get)
	cancels      *cancelSet        // the cancellation marks
	holding      holdSet           // the requests being handled, by stream sequence
	ready        atomic.Bool

	// onDecision, when set by tests, is called after each message is
	// settled.
	onDecision func(id string, d decision)
}

// New checks cfg and returns a worker that will use js. Metrics are
// registered on reg (nil: not registered). A nil logger discards logs.
func New(cfg Config, js jetstream.JetStream, reg prometheus.Registerer, logger *slog.Logger) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Worker{cfg: cfg, js: js, log: logger, metrics: cfg.Metrics, now: time.Now, cancels: newCancelSet(), id: nuid.Next()}
	if w.metrics == nil {
		w.metrics = NewMetrics(reg)
	}
	w.tracer = cfg.Tracer
	if w.tracer == nil {
		w.tracer = tracing.Tracer()
	}
	w.gatherer = cfg.Gatherer
	if w.gatherer == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			w.gatherer = g
		}
	}
	var err error
	if w.admission, err = config.NewAdmission(cfg.Limits, cfg.Templates, cfg.Connections); err != nil {
		return nil, err
	}
	w.admission.NoOneClick = cfg.Unsubscribe == nil
	w.suppressions = cfg.Suppressions
	if len(cfg.Connections) == 0 {
		ft, err := NewFileTransport(cfg.Outbox)
		if err != nil {
			return nil, err
		}
		w.transport = ft
	} else {
		st, err := NewSMTPTransport(cfg.Connections, w.metrics, logger)
		if err != nil {
			return nil, err
		}
		w.transport, w.smtp = st, st
	}
	w.dkim, w.targets = map[string]*DKIMSigner{}, map[string]*config.Target{}
	for name, c := range cfg.Connections {
		if w.targets[name], err = c.Target(); err != nil {
			return nil, fmt.Errorf("connection %q: %w", name, err)
		}
		var keys []*dkim.Key
		for _, k := range c.DKIM {
			key, err := dkim.LoadKeyFile(k.Domain, k.Selector, k.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("connection %q: %w", name, err)
			}
			keys = append(keys, key)
		}
		if w.dkim[name], err = NewDKIMSigner(keys, w.metrics); err != nil {
			return nil, fmt.Errorf("connection %q: %w", name, err)
		}
	}
	return w, nil
}

// Ready reports whether the worker is connected to NATS and its streams
// are reachable (what /readyz answers).
func (w *Worker) Ready() bool { return w.ready.Load() && w.js.Conn().IsConnected() }

// Run ensures the streams and the consumer exist, then consumes and
// delivers until ctx ends. Then it stops pulling, returns buffered messages,
// lets in-flight deliveries finish within GracePeriod, cancels and returns
// the rest to the stream, closes the SMTP sessions and returns nil. It
// returns an error when it cannot start, or when its HTTP server fails
// (after the same graceful stop).
func (w *Worker) Run(ctx context.Context) error {
	started := w.now()
	ctx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	// Background work (the HTTP server, the SMTP janitor, the queue
	// gauges) stops after the handlers, so that sessions stay open for
	// them and the probes answer until the end.
	bgCtx, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	defer func() { stopBG(); bg.Wait() }()

	if w.cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", w.cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http listen: %w", err)
		}
		w.serveHTTP(bgCtx, &bg, ln, stopRun)
	}

	top, err := w.cfg.streams().Ensure(ctx, w.js)
	if err != nil {
		return err
	}
	w.results = top.Results
	if w.smtp != nil {
		bg.Go(func() { _ = w.smtp.Run(bgCtx) })
	}
	bg.Go(func() { w.cancels.watch(bgCtx, top.Cancelled, w.log) })
	if w.suppressions == nil {
		w.suppressions, err = suppress.Open(ctx, w.js, w.cfg.Names, suppress.Options{
			Replicas: w.cfg.Replicas, BounceTTL: w.cfg.SuppressBounceTTL, Logger: w.log})
		if err != nil {
			return err
		}
	}
	if w.checker, err = suppress.NewChecker(ctx, w.suppressions); err != nil {
		return err
	}
	bg.Go(func() {
		if err := w.checker.Run(bgCtx); err != nil {
			w.log.Error("suppression list watch stopped", "error", err)
		}
	})
	// No delivery before the cancellation marks and the suppression list
	// are in: a cancelled message must never be sent, nor a suppressed
	// recipient sent to.
	select {
	case <-w.cancels.loaded:
	case <-ctx.Done():
		return nil
	}
	if err := w.checker.WaitReady(ctx); err != nil {
		return nil
	}
	w.ready.Store(true)
	defer func() { w.ready.Store(false); w.metrics.Ready.Set(0) }()
	bg.Go(func() { w.watchPending(bgCtx, top) })
	bg.Go(func() { w.mirrorReady(bgCtx) })
	bg.Go(func() { w.heartbeat(bgCtx, started) }) // heartbeat.go

	// Handlers outlive ctx by up to GracePeriod.
	hctx, cancelHandlers := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelHandlers(nil)
	var handlers sync.WaitGroup
	w.log.InfoContext(ctx, "worker started", "config", w.cfg)
	w.consume(ctx, hctx, top, &handlers) // returns when ctx ends

	done := make(chan struct{})
	go func() { handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.GracePeriod):
		w.log.Warn("grace period over; returning in-flight messages to the stream", "grace_period", w.cfg.GracePeriod)
		cancelHandlers(errShutdown)
		<-done
	}
	w.log.Info("worker stopped")
	if cause := context.Cause(ctx); errors.Is(cause, errHTTPServer) {
		return cause
	}
	return nil
}

// errHTTPServer is the cause of a Run that stopped because its HTTP server
// failed.
var errHTTPServer = errors.New("http server failed")

// serveHTTP serves Handler on ln until ctx ends, then shuts the server down
// within 5 s. If serving fails, it stops Run with errHTTPServer.
func (w *Worker) serveHTTP(ctx context.Context, wg *sync.WaitGroup, ln net.Listener, stopRun context.CancelCauseFunc) {
	srv := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error("http server failed; stopping", "error", err)
			stopRun(fmt.Errorf("%w: %w", errHTTPServer, err))
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	w.log.Info("serving http", "addr", ln.Addr().String())
}

// Handler serves /metrics, /healthz, /readyz and, for every other path,
// Config.API when it is set.
func (w *Worker) Handler() http.Handler {
	mux := http.NewServeMux()
	if w.cfg.API != nil {
		mux.Handle("/", w.cfg.API)
	}
	if w.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(w.gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = rw.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !w.Ready() {
			rw.WriteHeader(http.StatusServiceUnavailable)
			_, _ = rw.Write([]byte("not ready: NATS disconnected or streams unreachable\n"))
			return
		}
		_, _ = rw.Write([]byte("ready\n"))
	})
	return mux
}
