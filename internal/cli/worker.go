package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/console"
	"github.com/jetmail/jetmail/httpapi"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/webhook"
	"github.com/jetmail/jetmail/worker"
)

// workerFlags are the flags of `jetmail worker` (contract §5 and more).
// Most bind straight into cfg, which starts as worker.DefaultConfig(), so
// the flags' defaults are the worker's.
type workerFlags struct {
	cfg           worker.Config
	natsURL       string
	subjectPrefix string
	smtp          smtpFlags
	api           apiTokenFlags
	webhooks      webhookFlags
	oneClick      oneClickFlags
	indexDir      string
	cpuProfile    string
	nats          natsAuth
	embedded      embeddedFlags
	log           logFlags
}

const workerLong = `Consume send requests from NATS JetStream and deliver them.

The worker creates the streams and the consumer it needs at start-up, so an
empty NATS server is enough. Without --nats-url it starts an embedded
single-node JetStream server (on --embedded-addr, data under --data-dir) that
other jetmail commands and services can connect to. Without --smtp-url it
delivers nothing: each message is written as <Id>.eml into --outbox, which is
the way to try jetmail out.

SMTP connections are URLs: smtp://user@host:587 uses STARTTLS when the server
offers it (?tls=required insists, ?tls=none refuses), smtps://host:465 uses
implicit TLS. Keep the password out of the URL: use --smtp-password-file or
the environment variable JETMAIL_SMTP_PASSWORD. Server certificates are
verified against the system roots (SSL_CERT_FILE and SSL_CERT_DIR work) or
--smtp-ca-file. More connections can be named with --smtp-connection, or
described in a YAML file given with --connections (each with its URL,
password file or variable, pool size, rate limit, default and allowed
senders, CA file); a request chooses one with its Connection key, and
"default" is used when it names none. The --smtp-* flags define the
"default" connection, or override the file's settings for it.

NATS connections can authenticate with --nats-user and --nats-password (or
--nats-password-file), --nats-token (or --nats-token-file), an NKey seed file
(--nats-nkey) or a credentials file (--nats-creds), and use TLS with
--nats-ca-file, and --nats-cert and --nats-key for mutual TLS.

Transient failures (SMTP 4xx, timeouts, refused connections, rejected
authentication) are retried with exponential backoff; the waiting happens in
JetStream, so a deferred message survives a restart.

On SIGTERM or SIGINT the worker stops taking requests, lets those in flight
finish within --grace-period, returns the rest to the stream and exits 0.

It serves Prometheus metrics on /metrics, /healthz and /readyz, and the HTTP
API, on --http-addr. Logs go to stderr; they never contain passwords or
message bodies.`

func newWorkerCmd(s stdio) *cobra.Command {
	cmd, _ := workerCommand(s)
	return cmd
}

// workerCommand returns the worker command and the flags it fills.
func workerCommand(s stdio) (*cobra.Command, *workerFlags) {
	f := &workerFlags{cfg: worker.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Consume send requests and deliver them over SMTP",
		Long:  workerLong,
		Example: `  # try it out: embedded NATS, messages written to ./outbox
  jetmail worker

  # production: a NATS cluster and an SMTP relay, password from a file
  jetmail worker --nats-url nats://nats-1:4222,nats://nats-2:4222 --replicas 3 \
      --smtp-url smtp://mailer@relay.example.com:587?tls=required \
      --smtp-password-file /run/secrets/smtp-password --smtp-from noreply@example.com

  # several named connections from a file, NATS with a password and TLS
  jetmail worker --connections /etc/jetmail/connections.yaml \
      --nats-url nats://nats:4222 --nats-user jetmail --nats-password-file /run/secrets/nats \
      --nats-ca-file /etc/jetmail/nats-ca.pem

  # the same with environment variables
  JETMAIL_NATS_URL=nats://nats:4222 JETMAIL_SMTP_URL=smtps://relay.example.com:465 \
      JETMAIL_SMTP_PASSWORD=... jetmail worker`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), cmd.Flags(), s)
		},
	}
	c, def := &f.cfg, worker.DefaultConfig()
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.natsURL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded JetStream server")
	fs.StringVar(&f.smtp.url, "smtp-url", "", "URL of the default SMTP connection, such as smtp://user@relay:587; empty writes .eml files into --outbox")
	fs.StringVar(&c.Outbox, "outbox", def.Outbox, "folder of the .eml outbox used without --smtp-url")
	fs.StringVar(&c.HTTPAddr, "http-addr", def.HTTPAddr, "address of the HTTP server for /metrics, /healthz, /readyz and the HTTP API")
	addIndexFlag(fs, &f.indexDir)
	fs.IntVar(&c.Concurrency, "concurrency", def.Concurrency, "deliveries in flight at once (SMTP sessions stay bounded by --smtp-pool-size)")
	fs.IntVar(&c.MaxInflightBytes, "max-inflight-bytes", def.MaxInflightBytes, "memory the deliveries in flight may hold, counted as 4 times each request's size; large requests wait for room")
	fs.DurationVar(&c.Retry.Initial, "retry-initial", def.Retry.Initial, "delay before the first retry")
	fs.Float64Var(&c.Retry.Multiplier, "retry-multiplier", def.Retry.Multiplier, "growth of the retry delay per attempt")
	fs.DurationVar(&c.Retry.MaxInterval, "retry-max-interval", def.Retry.MaxInterval, "largest retry delay")
	fs.IntVar(&c.Retry.MaxAttempts, "max-attempts", def.Retry.MaxAttempts, "delivery attempts before a message fails")
	fs.DurationVar(&c.Retry.MaxAge, "max-age", def.Retry.MaxAge, "age after which a deferred message fails")
	fs.DurationVar(&c.GracePeriod, "grace-period", def.GracePeriod, "time to finish in-flight deliveries on SIGTERM")
	fs.StringVar(&f.subjectPrefix, "subject-prefix", def.Names.Prefix, "first token of every subject")
	fs.IntVar(&c.Replicas, "replicas", def.Replicas, "JetStream replicas of the streams the worker creates (3 on a cluster)")
	f.smtp.addFlags(fs)
	fs.StringVar(&c.Templates, "templates", "", "folder of message templates (NAME.subject.tmpl, NAME.text.tmpl, NAME.html.tmpl) that requests name with Template")
	addLimitFlags(fs, &c.Limits)
	f.api.addFlags(fs)
	f.webhooks.addFlags(fs)
	f.oneClick.addFlags(fs, true)
	fs.DurationVar(&c.SuppressBounceTTL, "suppress-bounce-ttl", def.SuppressBounceTTL, "how long a recipient the server refused as unknown (5.1.x) stays on the suppression list")
	fs.IntVar(&c.Prefetch, "prefetch", 0, "requests buffered ahead of the deliveries, split between the lanes; 0 means --concurrency")
	fs.Float64Var(&c.LaneShare, "lane-share", def.LaneShare, "least share of the deliveries a lane with requests waiting gets while more urgent lanes have work (below 0.5)")
	fs.DurationVar(&c.AckWait, "ack-wait", def.AckWait, "how long JetStream waits for a worker that took a message before giving it to another (after a crash); in-flight deliveries renew it")
	f.nats.addFlags(fs)
	f.embedded.addFlags(fs)
	f.log.addFlags(fs)
	fs.StringVar(&f.cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the worker to this file until it stops (JETMAIL_CPU_PROFILE reaches the workers that jetmail bench starts)")
	_ = fs.MarkHidden("cpu-profile")
	return cmd, f
}

// noArgs rejects positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return badFlags("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// configFlags maps the worker.Config fields that flags set to the flags,
// so that a bad value is reported as the flag the user gave.
var configFlags = map[string]string{
	"Names.Prefix": "subject-prefix", "Concurrency": "concurrency", "Prefetch": "prefetch",
	"Retry.Initial": "retry-initial", "Retry.Multiplier": "retry-multiplier", "Retry.MaxInterval": "retry-max-interval",
	"Retry.MaxAttempts": "max-attempts", "Retry.MaxAge": "max-age", "GracePeriod": "grace-period",
	"AckWait": "ack-wait", "Replicas": "replicas",
	"Limits.MaxRequestBytes": "max-request-bytes", "Limits.MaxAttachmentBytes": "max-attachment-bytes",
	"Limits.MaxRecipients": "max-recipients", "Limits.MaxHeaders": "max-headers", "Limits.MaxHeaderLength": "max-header-length",
	"Connections": "smtp-url", "LaneShare": "lane-share", "MaxInflightBytes": "max-inflight-bytes",
	"PublicURL": "public-url", "SuppressBounceTTL": "suppress-bounce-ttl",
}

// config turns the flags into a worker configuration: the values a flag
// bound, the connections, and checks that the worker's own validation
// cannot make (a zero value that the worker would take as "default").
func (f *workerFlags) config(fs *pflag.FlagSet, logger *slog.Logger) (worker.Config, error) {
	cfg := f.cfg
	cfg.Names = schema.DefaultNames().WithPrefix(f.subjectPrefix)
	var errs []error
	// Zero means "the default" to worker.Config; on the command line it is
	// a mistake.
	for _, z := range []struct {
		flag string
		zero bool
	}{
		{"concurrency", cfg.Concurrency == 0}, {"max-attempts", cfg.Retry.MaxAttempts == 0}, {"replicas", cfg.Replicas == 0},
		{"retry-initial", cfg.Retry.Initial == 0}, {"retry-max-interval", cfg.Retry.MaxInterval == 0},
		{"max-age", cfg.Retry.MaxAge == 0}, {"grace-period", cfg.GracePeriod <= 0}, {"ack-wait", cfg.AckWait == 0},
	} {
		if z.zero {
			errs = append(errs, badFlags("--%s must be positive, got %s", z.flag, fs.Lookup(z.flag).Value))
		}
	}
	errs = append(errs, checkLimits(cfg.Limits)...)
	if cfg.Prefetch < 0 {
		errs = append(errs, badFlags("--prefetch must not be negative, got %d", cfg.Prefetch))
	}
	if cfg.Templates != "" {
		if st, err := os.Stat(cfg.Templates); err != nil {
			errs = append(errs, withCode(exitUsage, fmt.Errorf("--templates: %w", err)))
		} else if !st.IsDir() {
			errs = append(errs, badFlags("--templates %s is not a folder", cfg.Templates))
		}
	}
	tokens, err := f.api.list()
	if err != nil {
		errs = append(errs, err)
	}
	f.api.tokens = tokens
	conns, err := f.smtp.connections(fs, logger)
	if err != nil {
		errs = append(errs, err)
	}
	cfg.Connections = conns
	cfg.PublicURL = f.oneClick.publicURL
	if cfg.Unsubscribe, err = f.oneClick.tokens(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, flagErrors(err)
	}
	if len(cfg.Connections) == 0 {
		dir, err := filepath.Abs(cfg.Outbox)
		if err != nil {
			dir = cfg.Outbox
		}
		logger.Warn("no --smtp-url: messages are NOT sent; each is written as an .eml file into the outbox", "outbox", dir)
		if f.smtp.from != "" || len(f.smtp.allowed) > 0 {
			logger.Warn("--smtp-from and --smtp-allowed-senders apply to SMTP connections only; the outbox does not use them")
		}
	}
	return cfg, nil
}

// flagErrors turns worker.Config's field errors into usage errors that
// name the flag.
func flagErrors(err error) error {
	var out []error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var fe *worker.FieldError
		if errors.As(err, &fe) {
			if flag, ok := configFlags[fe.Field]; ok && fe.Field != "Connections" {
				out = append(out, badFlags("--%s %v", flag, fe.Err))
				return
			}
			out = append(out, withCode(exitUsage, fe.Err))
			return
		}
		out = append(out, withCode(exitUsage, err))
	}
	walk(err)
	return errors.Join(out...)
}

// run starts the embedded NATS server if needed, connects, and runs the
// worker until ctx ends; then it drains the NATS connection and stops the
// embedded server.
func (f *workerFlags) run(ctx context.Context, fs *pflag.FlagSet, s stdio) error {
	logger, err := f.log.logger(s.errOut)
	if err != nil {
		return err
	}
	stopTracing, err := startTracing(ctx, "jetmail-worker")
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg, err := f.config(fs, logger)
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(f.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	hooks, err := f.webhooks.hooks()
	if err != nil {
		return err
	}
	natsOpts, err := f.nats.options(fs)
	if err != nil {
		return err
	}
	url := f.natsURL
	if url == "" {
		if f.nats.anySet(fs) {
			logger.Warn("the --nats-* security settings apply to a NATS server given with --nats-url; the embedded server (no --nats-url) listens without authentication or TLS, so they are not used")
			natsOpts = nil
		}
		srv, err := f.embedded.start(logger)
		if err != nil {
			return err
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
			logger.Info("embedded NATS server stopped")
		}()
		url = srv.ClientURL()
	}

	nc, closed, err := connectWorker(url, logger, &f.nats, natsOpts...)
	if err != nil {
		return err
	}
	defer drain(nc, closed)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	// The HTTP API beside the worker admits requests as the worker does.
	adm, err := config.NewAdmission(cfg.Limits, cfg.Templates, cfg.Connections)
	if err != nil {
		return withCode(exitUsage, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	cfg.Gatherer = reg
	cfg.Metrics = worker.NewMetrics(reg) // shared with the API, which counts its cancellations
	adm.NoOneClick = cfg.Unsubscribe == nil
	// The suppression list, which the API edits and the worker applies.
	if cfg.Suppressions, err = suppress.Open(ctx, js, cfg.Names, suppress.Options{
		Replicas: cfg.Replicas, BounceTTL: cfg.SuppressBounceTTL, Logger: logger}); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	idx, stopIndex, err := startIndex(ctx, f.indexDir, js, cfg.Names, logger)
	if err != nil {
		return err
	}
	defer stopIndex()
	api, err := httpapi.New(httpapi.Config{Names: cfg.Names, Admission: adm, Tokens: f.api.tokens,
		Cancelled: cfg.Metrics.CancelCounter(), Suppressions: cfg.Suppressions, Unsubscribe: cfg.Unsubscribe, Search: idx}, js, logger)
	if err != nil {
		return withCode(exitUsage, err)
	}
	con, err := console.New(console.Config{Names: cfg.Names, JS: js, Search: idx, Suppressions: cfg.Suppressions,
		Tokens: f.api.tokens, Cancelled: cfg.Metrics.CancelCounter(), Logger: logger})
	if err != nil {
		return withCode(exitUsage, err)
	}
	defer con.Close()
	cfg.API = withConsole(api.Handler(), con)
	w, err := worker.New(cfg, js, reg, logger)
	if err != nil {
		return withCode(exitUsage, err)
	}
	// The webhooks' dispatcher runs beside the deliveries, on its own
	// consumers, until the worker stops.
	runCtx, stopHooks := context.WithCancel(ctx)
	defer stopHooks()
	var hooksDone sync.WaitGroup
	if len(hooks) > 0 {
		d, err := webhook.New(js, cfg.Names, hooks, reg, logger, webhook.Options{})
		if err != nil {
			return withCode(exitUsage, err)
		}
		hooksDone.Go(func() {
			if err := d.Run(runCtx); err != nil {
				logger.Error("webhooks stopped", "error", err)
			}
		})
	}
	defer hooksDone.Wait()
	if err := w.Run(ctx); err != nil {
		if ctx.Err() != nil {
			// Stopped while starting up: that is a stop, not a failure.
			logger.Info("stopped during start-up", "error", err)
			return nil
		}
		return err
	}
	return nil
}

// drain drains the NATS connection, waiting for it to close within its
// drain timeout (closed is closed when it has).
func drain(nc *nats.Conn, closed <-chan struct{}) {
	if err := nc.Drain(); err != nil {
		nc.Close()
	}
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		nc.Close()
	}
}

// embeddedFlags configure the in-process JetStream server of a worker run
// without --nats-url (and of `jetmail server`).
type embeddedFlags struct {
	addr, dataDir string
	syncAlways    bool
}

func (e *embeddedFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&e.addr, "embedded-addr", "127.0.0.1:4222", "address of the embedded NATS server started without --nats-url")
	fs.StringVar(&e.dataDir, "data-dir", "./jetmail-data", "where the embedded NATS server stores the streams")
	fs.BoolVar(&e.syncAlways, "sync-always", false, "make the embedded NATS server fsync every write before acknowledging it (no loss on an OS crash, much slower)")
}

// start starts the embedded server.
func (e *embeddedFlags) start(logger *slog.Logger) (*server.Server, error) {
	dir, err := filepath.Abs(e.dataDir)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--data-dir: %w", err))
	}
	// The server reports a busy port only after a 10 s timeout and without
	// saying why; find out at once.
	if _, port, err := net.SplitHostPort(e.addr); err == nil && port != "0" {
		ln, err := net.Listen("tcp", e.addr)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS server cannot listen on %s: %w (is another `jetmail worker` running? connect to it with --nats-url, or choose another --embedded-addr)", e.addr, err)
		}
		_ = ln.Close()
	}
	srv, err := worker.StartEmbedded(worker.EmbeddedConfig{Addr: e.addr, StoreDir: dir, SyncAlways: e.syncAlways})
	if err != nil {
		return nil, err
	}
	logger.Info("embedded NATS server started; point other jetmail commands and services at it",
		"url", srv.ClientURL(), "data_dir", dir, "sync_always", e.syncAlways)
	return srv, nil
}

// connectWorker connects to NATS for a long-running command with the
// security options of auth: it reconnects forever and logs connection
// events. closed is closed when the connection is.
func connectWorker(url string, logger *slog.Logger, auth *natsAuth, opts ...nats.Option) (*nats.Conn, <-chan struct{}, error) {
	closed := make(chan struct{})
	opts = append(opts,
		nats.Name("jetmail-worker"),
		nats.MaxReconnects(-1),
		nats.DrainTimeout(10*time.Second),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() || c.IsDraining() {
				return
			}
			logger.Warn("disconnected from NATS; reconnecting", "error", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("reconnected to NATS", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			args := []any{"error", err}
			if sub != nil {
				args = append(args, "subject", sub.Subject)
			}
			logger.Error("NATS error", args...)
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, auth.natsConnectError(url, err, "")
	}
	logger.Info("connected to NATS", "url", nc.ConnectedUrlRedacted(), "auth", auth.method(), "tls", nc.TLSRequired() || auth.tls())
	return nc, closed, nil
}

// startCPUProfile writes a CPU profile to path (the hidden --cpu-profile
// of worker and server) until stop is called; an empty path profiles
// nothing. Its error is a usage error naming the flag.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	out, err := os.Create(path)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--cpu-profile: %w", err))
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return nil, withCode(exitUsage, fmt.Errorf("--cpu-profile: %w", err))
	}
	return func() {
		pprof.StopCPUProfile()
		_ = out.Close()
	}, nil
}
