package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jetmail/jetmail/schema"
)

// Config is everything a worker needs, as data. Zero fields take the
// documented defaults (see withDefaults); validate names each bad field.
type Config struct {
	// Names are the subjects, streams and consumer. A zero Prefix (or any
	// zero name) takes the contract's default.
	Names schema.Names
	// Connections are the named SMTP connections; requests without a
	// Connection use "default". Empty means the file transport: every
	// message is written as <Id>.eml into Outbox.
	Connections map[string]SMTPConfig
	// Outbox is the folder of the file transport. Default "./outbox".
	Outbox string
	// Concurrency is the number of deliveries in flight. Default 16.
	Concurrency int
	// Prefetch is how many messages the client buffers ahead of the
	// handlers. Default: Concurrency. Keep it small: a buffered message's
	// AckWait runs while it waits.
	Prefetch int
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
	// Limits bound requests; zero fields take schema.DefaultLimits.
	Limits schema.Limits
	// Templates is a folder of message templates (NAME.subject.tmpl,
	// NAME.text.tmpl, NAME.html.tmpl) that requests name with Template.
	// Empty means none.
	Templates string
	// HTTPAddr is where /metrics, /healthz, /readyz and the HTTP API are
	// served. Empty means no HTTP server (the caller may mount Handler
	// itself).
	HTTPAddr string
	// APITokens are the bearer tokens of the HTTP API (POST /v1/messages,
	// GET /v1/messages/{Id}), served by Handler. Empty means the API is
	// open.
	APITokens []string
	// Gatherer serves /metrics. Default: prometheus.DefaultGatherer when
	// the registerer given to New is the default one, else nothing is
	// served unless it is set.
	Gatherer prometheus.Gatherer
}

// LogValue lists the configuration for logs, with SMTP passwords redacted.
func (c Config) LogValue() slog.Value {
	conns := make([]any, 0, len(c.Connections))
	for name, sc := range c.Connections {
		conns = append(conns, slog.String(name, RedactURL(sc.URL)))
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

// withDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	def := schema.DefaultNames()
	if c.Names.Prefix == "" {
		c.Names.Prefix = def.Prefix
	}
	if c.Names.RequestStream == "" {
		c.Names.RequestStream = def.RequestStream
	}
	if c.Names.ResultStream == "" {
		c.Names.ResultStream = def.ResultStream
	}
	if c.Names.DeadStream == "" {
		c.Names.DeadStream = def.DeadStream
	}
	if c.Names.Consumer == "" {
		c.Names.Consumer = def.Consumer
	}
	if c.Outbox == "" {
		c.Outbox = "./outbox"
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.Prefetch == 0 {
		c.Prefetch = c.Concurrency
	}
	r, d := &c.Retry, DefaultRetryPolicy
	if r.Initial == 0 {
		r.Initial = d.Initial
	}
	if r.Multiplier == 0 {
		r.Multiplier = d.Multiplier
	}
	if r.MaxInterval == 0 {
		r.MaxInterval = max(d.MaxInterval, r.Initial)
	}
	if r.MaxAttempts == 0 {
		r.MaxAttempts = d.MaxAttempts
	}
	if r.MaxAge == 0 {
		r.MaxAge = d.MaxAge
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = 30 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 100000
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = time.Hour
	}
	if c.ResultMaxAge == 0 {
		c.ResultMaxAge = 7 * 24 * time.Hour
	}
	if c.DeadMaxAge == 0 {
		c.DeadMaxAge = 30 * 24 * time.Hour
	}
	c.Limits = c.Limits.WithDefaults()
	return c
}

// validate returns an error naming every bad field of a defaulted config.
func (c Config) validate() error {
	var errs []error
	if !schema.ValidToken(c.Names.Prefix) {
		errs = append(errs, fmt.Errorf("subject prefix %q is not a single NATS token", c.Names.Prefix))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency must be at least 1, got %d", c.Concurrency))
	}
	if c.Prefetch < 1 {
		errs = append(errs, fmt.Errorf("prefetch must be at least 1, got %d", c.Prefetch))
	}
	if err := c.Retry.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.GracePeriod < 0 {
		errs = append(errs, fmt.Errorf("grace period must not be negative, got %s", c.GracePeriod))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("ack wait must be at least 1s, got %s", c.AckWait))
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas must be between 1 and 5, got %d", c.Replicas))
	}
	for name := range c.Connections {
		if !schema.ValidToken(name) {
			errs = append(errs, fmt.Errorf("connection name %q is not valid", name))
		}
	}
	return errors.Join(errs...)
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
	senders   map[string]senderPolicy
	api       *API // the HTTP API; nil without a JetStream
	templates templates
	now       func() time.Time

	results jetstream.Stream // for dedupe look-ups (direct get)
	ready   atomic.Bool

	// onDecision, when set by tests, is called after each message is
	// settled.
	onDecision func(id string, d decision)
}

// New checks cfg and returns a worker that will use js. Metrics are
// registered on reg (nil: not registered). A nil logger discards logs.
func New(cfg Config, js jetstream.JetStream, reg prometheus.Registerer, logger *slog.Logger) (*Worker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &Worker{cfg: cfg, js: js, log: logger, metrics: NewMetrics(reg), now: time.Now}
	var err error
	w.gatherer = cfg.Gatherer
	if w.gatherer == nil {
		if g, ok := reg.(prometheus.Gatherer); ok {
			w.gatherer = g
		}
	}
	if w.templates, err = loadTemplates(cfg.Templates); err != nil {
		return nil, err
	}
	w.senders = map[string]senderPolicy{}
	if len(cfg.Connections) == 0 {
		ft, err := NewFileTransport(cfg.Outbox)
		if err != nil {
			return nil, err
		}
		w.transport = ft
		// The outbox is for trying jetmail out: let `jetmail send --to x`
		// work without a sender.
		w.senders["default"] = senderPolicy{defaultFrom: "jetmail@localhost"}
	} else {
		st, err := NewSMTPTransport(cfg.Connections, w.metrics, logger)
		if err != nil {
			return nil, err
		}
		w.transport, w.smtp = st, st
		for name, c := range cfg.Connections {
			w.senders[name] = senderPolicy{defaultFrom: c.From, allowed: c.AllowedSenders}
		}
	}
	if js != nil {
		apiCfg := APIConfig{Names: cfg.Names, Limits: cfg.Limits, Tokens: cfg.APITokens}
		if w.api, err = newAPI(apiCfg, js, logger, w.senders, w.templates); err != nil {
			return nil, fmt.Errorf("worker config: %w", err)
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
// returns an error only when it cannot start.
func (w *Worker) Run(ctx context.Context) error {
	var httpSrv *http.Server
	if w.cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", w.cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http listen: %w", err)
		}
		httpSrv = &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = httpSrv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = httpSrv.Shutdown(sctx)
		}()
		w.log.InfoContext(ctx, "serving http", "addr", ln.Addr().String())
	}

	cons, err := w.ensureStreams(ctx)
	if err != nil {
		return err
	}
	w.ready.Store(true)
	defer func() { w.ready.Store(false); w.metrics.Ready.Set(0) }()

	// Background work stops after the handlers, so that sessions stay
	// open for them.
	bgCtx, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	defer func() { stopBG(); bg.Wait() }()
	if w.smtp != nil {
		bg.Go(func() { _ = w.smtp.Run(bgCtx) })
	}
	bg.Go(func() { w.watchPending(bgCtx, cons) })

	// Handlers outlive ctx by up to GracePeriod.
	hctx, cancelHandlers := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelHandlers(nil)

	jobs := make(chan jetstream.Msg)
	var handlers sync.WaitGroup
	for range w.cfg.Concurrency {
		handlers.Go(func() {
			for m := range jobs {
				w.handle(hctx, m)
			}
		})
	}
	w.log.InfoContext(ctx, "worker started", "config", w.cfg)
	w.pull(ctx, cons, jobs) // returns when ctx ends
	close(jobs)

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
	return nil
}

// pull feeds jobs from the consumer until ctx ends, then drains the client
// buffer back to the stream with Nak.
func (w *Worker) pull(ctx context.Context, cons jetstream.Consumer, jobs chan<- jetstream.Msg) {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.Prefetch), jetstream.PullHeartbeat(5*time.Second))
		if err != nil {
			w.log.ErrorContext(ctx, "cannot pull; retrying", "error", err)
			w.ready.Store(false)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
				if c, err := w.ensureStreams(ctx); err == nil {
					cons = c
					w.ready.Store(true)
				}
			}
			continue
		}
		stop := context.AfterFunc(ctx, it.Drain)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					break
				}
				if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConnectionClosed) {
					w.log.WarnContext(ctx, "pull interrupted", "error", err)
					continue
				}
				w.log.ErrorContext(ctx, "pull failed", "error", err)
				it.Stop()
				break
			}
			if ctx.Err() != nil {
				_ = m.Nak() // drained from the buffer during shutdown
				continue
			}
			select {
			case jobs <- m:
			case <-ctx.Done():
				_ = m.Nak()
			}
		}
		stop()
	}
}

// watchPending refreshes the queue_pending gauge and readiness.
func (w *Worker) watchPending(ctx context.Context, cons jetstream.Consumer) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := cons.Info(ictx)
		cancel()
		if err == nil {
			w.metrics.QueuePending.Set(float64(info.NumPending))
			w.metrics.AckPending.Set(float64(info.NumAckPending))
			w.ready.Store(true)
		} else if ctx.Err() == nil {
			w.ready.Store(false)
		}
		if w.Ready() {
			w.metrics.Ready.Set(1)
		} else {
			w.metrics.Ready.Set(0)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Handler serves /metrics, /healthz, /readyz and the HTTP API (see API).
func (w *Worker) Handler() http.Handler {
	mux := http.NewServeMux()
	if w.api != nil {
		w.api.Register(mux)
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
