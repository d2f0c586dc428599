package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker"
)

// workerFlags are the flags of `jetmail worker` (CONTRACT §5 and more).
type workerFlags struct {
	natsURL       string
	subjectPrefix string
	replicas      int

	smtpURL            string
	smtpPassword       string
	smtpPasswordFile   string
	smtpCAFile         string
	smtpFrom           string
	smtpPoolSize       int
	smtpAllowedSenders []string
	smtpConnections    []string
	smtpRateLimit      float64
	connectionsFile    string
	outbox             string
	templates          string
	limits             schema.Limits
	api                apiTokenFlags
	nats               natsAuth

	httpAddr         string
	concurrency      int
	prefetch         int
	ackWait          time.Duration
	retryInitial     time.Duration
	retryMultiplier  float64
	retryMaxInterval time.Duration
	maxAttempts      int
	maxAge           time.Duration
	gracePeriod      time.Duration

	embeddedAddr string
	dataDir      string
	syncAlways   bool

	logLevel  string
	logFormat string
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

It serves Prometheus metrics on /metrics, and /healthz and /readyz, on
--http-addr. Logs go to stderr; they never contain passwords or message
bodies.`

func newWorkerCmd(s stdio) *cobra.Command {
	cmd, _ := workerCommand(s)
	return cmd
}

// workerCommand returns the worker command and the flags it fills.
func workerCommand(s stdio) (*cobra.Command, *workerFlags) {
	f := &workerFlags{}
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
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.natsURL, "nats-url", "", "NATS server URL(s), comma-separated; empty starts an embedded JetStream server")
	fs.StringVar(&f.smtpURL, "smtp-url", "", "URL of the default SMTP connection, such as smtp://user@relay:587; empty writes .eml files into --outbox")
	fs.StringVar(&f.outbox, "outbox", "./outbox", "folder of the .eml outbox used without --smtp-url")
	fs.StringVar(&f.httpAddr, "http-addr", ":8080", "address of the HTTP server for /metrics, /healthz and /readyz")
	fs.IntVar(&f.concurrency, "concurrency", 16, "deliveries in flight at once")
	fs.DurationVar(&f.retryInitial, "retry-initial", worker.DefaultRetryPolicy.Initial, "delay before the first retry")
	fs.Float64Var(&f.retryMultiplier, "retry-multiplier", worker.DefaultRetryPolicy.Multiplier, "growth of the retry delay per attempt")
	fs.DurationVar(&f.retryMaxInterval, "retry-max-interval", worker.DefaultRetryPolicy.MaxInterval, "largest retry delay")
	fs.IntVar(&f.maxAttempts, "max-attempts", worker.DefaultRetryPolicy.MaxAttempts, "delivery attempts before a message fails")
	fs.DurationVar(&f.maxAge, "max-age", worker.DefaultRetryPolicy.MaxAge, "age after which a deferred message fails")
	fs.DurationVar(&f.gracePeriod, "grace-period", 30*time.Second, "time to finish in-flight deliveries on SIGTERM")
	fs.StringVar(&f.subjectPrefix, "subject-prefix", schema.DefaultNames().Prefix, "first token of every subject")
	fs.IntVar(&f.replicas, "replicas", 1, "JetStream replicas of the streams the worker creates (3 on a cluster)")

	fs.StringVar(&f.smtpPassword, "smtp-password", "", "password of the default SMTP connection, replacing the URL's; prefer the environment variable or --smtp-password-file, as command lines are visible to other users")
	fs.StringVar(&f.smtpPasswordFile, "smtp-password-file", "", "file holding the password of the default SMTP connection (surrounding white space is ignored)")
	fs.StringVar(&f.smtpCAFile, "smtp-ca-file", "", "PEM file of the CAs to verify SMTP servers with, instead of the system roots")
	fs.StringVar(&f.smtpFrom, "smtp-from", "", "default sender, for requests without From")
	fs.IntVar(&f.smtpPoolSize, "smtp-pool-size", 4, "largest number of open SMTP sessions per connection")
	fs.StringSliceVar(&f.smtpAllowedSenders, "smtp-allowed-senders", nil, "comma-separated senders allowed to send (addresses, or @domain); others get 403; empty allows all")
	fs.Float64Var(&f.smtpRateLimit, "smtp-rate-limit", 0, "most messages per second through the default connection, shared by all its sessions; 0 means no limit")
	fs.StringArrayVar(&f.smtpConnections, "smtp-connection", nil, "another named SMTP connection, NAME=URL (repeatable); it shares the other --smtp-* settings but takes its password from its URL")
	fs.StringVar(&f.connectionsFile, "connections", "", "YAML file of named SMTP connections (see deploy/connections.example.yaml); the --smtp-* flags override its \"default\"")
	fs.StringVar(&f.templates, "templates", "", "folder of message templates (NAME.subject.tmpl, NAME.text.tmpl, NAME.html.tmpl) that requests name with Template")
	addLimitFlags(fs, &f.limits)
	f.api.addFlags(fs)
	fs.IntVar(&f.prefetch, "prefetch", 0, "requests buffered ahead of the deliveries; 0 means --concurrency")
	fs.DurationVar(&f.ackWait, "ack-wait", 60*time.Second, "how long JetStream waits for a worker that took a message before giving it to another (after a crash); in-flight deliveries renew it")

	f.nats.addFlags(fs)

	fs.StringVar(&f.embeddedAddr, "embedded-addr", "127.0.0.1:4222", "address of the embedded NATS server started without --nats-url")
	fs.StringVar(&f.dataDir, "data-dir", "./jetmail-data", "where the embedded NATS server stores the streams")
	fs.BoolVar(&f.syncAlways, "sync-always", false, "make the embedded NATS server fsync every write before acknowledging it (no loss on an OS crash, much slower)")

	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	return cmd, f
}

// noArgs rejects positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return badFlags("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// newLogger returns a structured logger writing to w.
func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, badFlags("--log-level must be debug, info, warn or error, got %q", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, badFlags("--log-format must be text or json, got %q", format)
}

// config turns the flags into a worker configuration. It reads the
// password file; the password itself is never logged (Config.LogValue
// redacts it).
func (f *workerFlags) config(fs *pflag.FlagSet, logger *slog.Logger) (worker.Config, error) {
	var errs []error
	positive := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, badFlags("--%s must be positive, got %s", name, d))
		}
	}
	atLeastOne := func(name string, n int) {
		if n < 1 {
			errs = append(errs, badFlags("--%s must be at least 1, got %d", name, n))
		}
	}
	positive("retry-initial", f.retryInitial)
	positive("retry-max-interval", f.retryMaxInterval)
	positive("max-age", f.maxAge)
	positive("grace-period", f.gracePeriod)
	positive("ack-wait", f.ackWait)
	atLeastOne("concurrency", f.concurrency)
	atLeastOne("max-attempts", f.maxAttempts)
	atLeastOne("replicas", f.replicas)
	atLeastOne("smtp-pool-size", f.smtpPoolSize)
	if f.retryMultiplier < 1 {
		errs = append(errs, badFlags("--retry-multiplier must be at least 1, got %g", f.retryMultiplier))
	}
	if f.prefetch < 0 {
		errs = append(errs, badFlags("--prefetch must not be negative, got %d", f.prefetch))
	}
	if !schema.ValidToken(f.subjectPrefix) {
		errs = append(errs, badFlags("--subject-prefix %q is not a single NATS token", f.subjectPrefix))
	}
	if f.smtpRateLimit < 0 {
		errs = append(errs, badFlags("--smtp-rate-limit must not be negative, got %g", f.smtpRateLimit))
	}
	errs = append(errs, checkLimits(f.limits)...)
	if f.templates != "" {
		if st, err := os.Stat(f.templates); err != nil {
			errs = append(errs, withCode(exitUsage, fmt.Errorf("--templates: %w", err)))
		} else if !st.IsDir() {
			errs = append(errs, badFlags("--templates %s is not a folder", f.templates))
		}
	}
	password, err := f.password(fs)
	if err != nil {
		errs = append(errs, err)
	}
	apiTokens, err := f.api.list()
	if err != nil {
		errs = append(errs, err)
	}
	var fileConns map[string]worker.SMTPConfig
	if f.connectionsFile != "" {
		if fileConns, err = loadConnections(f.connectionsFile, os.LookupEnv, logger); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return worker.Config{}, errors.Join(errs...)
	}

	cfg := worker.Config{
		Names:       schema.DefaultNames().WithPrefix(f.subjectPrefix),
		Outbox:      f.outbox,
		Concurrency: f.concurrency,
		Prefetch:    f.prefetch,
		Retry: worker.RetryPolicy{
			Initial:     f.retryInitial,
			Multiplier:  f.retryMultiplier,
			Jitter:      worker.DefaultRetryPolicy.Jitter,
			MaxInterval: f.retryMaxInterval,
			MaxAttempts: f.maxAttempts,
			MaxAge:      f.maxAge,
		},
		GracePeriod: f.gracePeriod,
		AckWait:     f.ackWait,
		Replicas:    f.replicas,
		HTTPAddr:    f.httpAddr,
		Templates:   f.templates,
		Limits:      f.limits,
		APITokens:   apiTokens,
	}
	smtpConfig := func(url string) worker.SMTPConfig {
		return worker.SMTPConfig{
			URL:            url,
			CAFile:         f.smtpCAFile,
			PoolSize:       f.smtpPoolSize,
			From:           f.smtpFrom,
			AllowedSenders: f.smtpAllowedSenders,
		}
	}
	if f.smtpURL != "" || len(f.smtpConnections) > 0 || len(fileConns) > 0 {
		cfg.Connections = map[string]worker.SMTPConfig{}
	}
	for name, c := range fileConns {
		cfg.Connections[name] = c
	}
	_, fileDefault := fileConns["default"]
	switch {
	case fileDefault:
		// The flags given override the file's settings of "default".
		c := cfg.Connections["default"]
		changed := func(name string) bool { return fs.Lookup(name).Changed }
		if f.smtpURL != "" {
			c.URL = f.smtpURL
		}
		if password != "" {
			c.Password = password
		}
		if changed("smtp-ca-file") {
			c.CAFile = f.smtpCAFile
		}
		if changed("smtp-pool-size") {
			c.PoolSize = f.smtpPoolSize
		}
		if changed("smtp-from") {
			c.From = f.smtpFrom
		}
		if changed("smtp-allowed-senders") {
			c.AllowedSenders = f.smtpAllowedSenders
		}
		if changed("smtp-rate-limit") {
			c.RateLimit = f.smtpRateLimit
		}
		cfg.Connections["default"] = c
	case f.smtpURL != "":
		c := smtpConfig(f.smtpURL)
		c.Password = password
		c.RateLimit = f.smtpRateLimit
		cfg.Connections["default"] = c
	}
	for _, nc := range f.smtpConnections {
		name, url, ok := strings.Cut(nc, "=")
		switch {
		case !ok || url == "":
			return cfg, badFlags("--smtp-connection wants NAME=URL, got %q", worker.RedactURL(nc))
		case name == "default":
			return cfg, badFlags("--smtp-connection: the default connection is set with --smtp-url")
		case !schema.ValidToken(name):
			return cfg, badFlags("--smtp-connection: %q is not a valid connection name", name)
		}
		if _, dup := cfg.Connections[name]; dup {
			if _, inFile := fileConns[name]; inFile {
				return cfg, badFlags("--smtp-connection: %q is also in --connections %s", name, f.connectionsFile)
			}
			return cfg, badFlags("--smtp-connection: %q is named twice", name)
		}
		cfg.Connections[name] = smtpConfig(url)
	}

	if len(cfg.Connections) > 0 {
		// Check the URLs and CA file now rather than after connecting to
		// NATS; this dials nothing.
		if _, err := worker.NewSMTPTransport(cfg.Connections, nil, nil); err != nil {
			return cfg, withCode(exitUsage, err)
		}
	}
	if f.smtpURL == "" && !fileDefault {
		if password != "" {
			logger.Warn("an SMTP password is set but there is no --smtp-url; it is not used")
		}
		if len(cfg.Connections) > 0 {
			logger.Warn("no default connection (--smtp-url, or \"default\" in --connections): requests that name no Connection will fail with status 400")
		}
	}
	if len(cfg.Connections) == 0 {
		dir, err := filepath.Abs(f.outbox)
		if err != nil {
			dir = f.outbox
		}
		logger.Warn("no --smtp-url: messages are NOT sent; each is written as an .eml file into the outbox", "outbox", dir)
		if f.smtpFrom != "" || len(f.smtpAllowedSenders) > 0 {
			logger.Warn("--smtp-from and --smtp-allowed-senders apply to SMTP connections only; the outbox does not use them")
		}
	}
	return cfg, nil
}

// password returns the SMTP password from --smtp-password-file or
// --smtp-password (JETMAIL_SMTP_PASSWORD). When both are set, the one given
// on the command line wins over the one from the environment; both on the
// command line, or both in the environment, is a usage error.
func (f *workerFlags) password(fs *pflag.FlagSet) (string, error) {
	return secretFlag(fs, "smtp-password", "smtp-password-file")
}

// run starts the embedded NATS server if needed, connects, and runs the
// worker until ctx ends; then it drains the NATS connection and stops the
// embedded server.
func (f *workerFlags) run(ctx context.Context, fs *pflag.FlagSet, s stdio) error {
	logger, err := newLogger(s.errOut, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	cfg, err := f.config(fs, logger)
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
		srv, err := f.startEmbedded(logger)
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
	defer func() {
		if err := nc.Drain(); err != nil {
			nc.Close()
		}
		select { // Drain closes the connection when done, within its timeout
		case <-closed:
		case <-time.After(15 * time.Second):
			nc.Close()
		}
	}()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	cfg.Gatherer = reg
	w, err := worker.New(cfg, js, reg, logger)
	if err != nil {
		return withCode(exitUsage, err)
	}
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

// startEmbedded starts the in-process JetStream server of a worker run
// without --nats-url.
func (f *workerFlags) startEmbedded(logger *slog.Logger) (*server.Server, error) {
	dir, err := filepath.Abs(f.dataDir)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--data-dir: %w", err))
	}
	// The server reports a busy port only after a 10 s timeout and without
	// saying why; find out at once.
	if _, port, err := net.SplitHostPort(f.embeddedAddr); err == nil && port != "0" {
		ln, err := net.Listen("tcp", f.embeddedAddr)
		if err != nil {
			return nil, fmt.Errorf("embedded NATS server cannot listen on %s: %w (is another `jetmail worker` running? connect to it with --nats-url, or choose another --embedded-addr)", f.embeddedAddr, err)
		}
		_ = ln.Close()
	}
	srv, err := worker.StartEmbedded(worker.EmbeddedConfig{Addr: f.embeddedAddr, StoreDir: dir, SyncAlways: f.syncAlways})
	if err != nil {
		return nil, err
	}
	logger.Info("embedded NATS server started; point other jetmail commands and services at it",
		"url", srv.ClientURL(), "data_dir", dir, "sync_always", f.syncAlways)
	return srv, nil
}

// connectWorker connects to NATS for a worker with the security options
// of auth: it reconnects forever and logs connection events. closed is
// closed when the connection is.
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
