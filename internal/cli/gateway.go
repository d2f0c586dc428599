package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/console"
	"github.com/jetmail/jetmail/httpapi"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// apiTokenFlags are the bearer tokens of the HTTP API, for the worker and
// the gateway.
type apiTokenFlags struct {
	tokens    []string
	tokenFile string
}

func (a *apiTokenFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringArrayVar(&a.tokens, "api-token", nil, "bearer token the HTTP API accepts (repeatable); none: the API is open. Prefer --api-token-file")
	fs.StringVar(&a.tokenFile, "api-token-file", "", "file of bearer tokens the HTTP API accepts, one per line")
}

// list returns every configured token.
func (a *apiTokenFlags) list() ([]string, error) {
	out := append([]string(nil), a.tokens...)
	if a.tokenFile != "" {
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("--api-token-file: %w", err))
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		if len(out) == len(a.tokens) {
			return nil, withCode(exitUsage, fmt.Errorf("--api-token-file %s holds no token", a.tokenFile))
		}
	}
	for _, t := range out {
		if strings.TrimSpace(t) == "" {
			return nil, badFlags("--api-token must not be empty")
		}
	}
	return out, nil
}

// withConsole serves the web console (package console) on /ui/ and the
// HTTP API on every other path, as the worker and the gateway do.
func withConsole(api, con http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ui/", con)
	mux.Handle("/", api)
	return mux
}

// gatewayFlags are the settings of `jetmail gateway`.
type gatewayFlags struct {
	clientFlags
	httpAddr    string
	tokens      apiTokenFlags
	oneClick    oneClickFlags
	indexDir    string
	connections string
	from        string
	allowed     []string
	limits      schema.Limits
	log         logFlags
}

func newGatewayCmd(s stdio) *cobra.Command {
	f := &gatewayFlags{}
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Serve the HTTP API alone, for producers that do not speak NATS",
		Long: `Serve the HTTP API (POST /v1/messages, GET /v1/messages/{Id}) without
delivering anything, for deployments that keep the API apart from the
workers. Every worker serves the same API on its --http-addr; the gateway is
the same code without the consumer.

A POST is answered 202 with the Id once JetStream has stored the request;
400 lists the invalid fields, 401 means a missing or wrong bearer token (when
tokens are configured), 403 a sender the connection does not allow, 413 a
request over the size limit. GET answers the latest result of an Id, or 404.

Give the gateway the same --connections file (or --smtp-from and
--smtp-allowed-senders) and limits as the workers, so that it refuses what
they would refuse; without them it leaves sender checks to the workers.
The API is described by schema/openapi.yaml.`,
		Example: `  jetmail gateway --nats-url nats://nats:4222 --api-token-file /run/secrets/api-tokens
  curl -i localhost:8080/v1/messages -H 'Authorization: Bearer s3cret' \
      -d '{"To": "jan@example.com", "Subject": "Hello", "Body": "Hi Jan"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), cmd.Flags(), s)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.httpAddr, "http-addr", ":8080", "address of the HTTP API, with /healthz and /readyz")
	f.tokens.addFlags(fs)
	f.oneClick.addFlags(fs, false)
	addIndexFlag(fs, &f.indexDir)
	fs.StringVar(&f.connections, "connections", "", "YAML file of named SMTP connections, for their senders (see deploy/connections.example.yaml)")
	fs.StringVar(&f.from, "smtp-from", "", "default sender of the default connection")
	fs.StringSliceVar(&f.allowed, "smtp-allowed-senders", nil, "senders the default connection allows (addresses, or @domain)")
	addLimitFlags(fs, &f.limits)
	f.log.addFlags(fs)
	f.register(cmd)
	return cmd
}

// addLimitFlags registers the request limit flags.
func addLimitFlags(fs *pflag.FlagSet, l *schema.Limits) {
	def := schema.DefaultLimits()
	fs.IntVar(&l.MaxRequestBytes, "max-request-bytes", def.MaxRequestBytes, "largest request payload in bytes; -1 for no limit")
	fs.IntVar(&l.MaxAttachmentBytes, "max-attachment-bytes", def.MaxAttachmentBytes, "largest total decoded size of a request's attachments in bytes; -1 for no limit")
	fs.IntVar(&l.MaxRecipients, "max-recipients", def.MaxRecipients, "most To, Cc and Bcc recipients of a request together; -1 for no limit")
	fs.IntVar(&l.MaxHeaders, "max-headers", def.MaxHeaders, "most extra Headers of a request; -1 for no limit")
	fs.IntVar(&l.MaxHeaderLength, "max-header-length", def.MaxHeaderLength, "longest extra header value and subject in bytes; -1 for no limit")
	fs.DurationVar(&l.MaxSchedule, "max-schedule", def.MaxSchedule, "how far ahead SendAt may be; further is a 400")
}

// checkLimits reports each limit flag that is neither positive nor -1.
func checkLimits(l schema.Limits) []error {
	var errs []error
	for _, c := range []struct {
		name string
		v    int
	}{
		{"max-request-bytes", l.MaxRequestBytes}, {"max-attachment-bytes", l.MaxAttachmentBytes},
		{"max-recipients", l.MaxRecipients}, {"max-headers", l.MaxHeaders}, {"max-header-length", l.MaxHeaderLength},
	} {
		if c.v == 0 || c.v < -1 {
			errs = append(errs, badFlags("--%s must be positive, or -1 for no limit, got %d", c.name, c.v))
		}
	}
	if l.MaxSchedule <= 0 {
		errs = append(errs, badFlags("--max-schedule must be positive, got %s", l.MaxSchedule))
	}
	return errs
}

func (f *gatewayFlags) run(ctx context.Context, fs *pflag.FlagSet, s stdio) error {
	if err := errors.Join(checkLimits(f.limits)...); err != nil {
		return err
	}
	logger, err := f.log.logger(s.errOut)
	if err != nil {
		return err
	}
	stopTracing, err := startTracing(ctx, "jetmail-gateway")
	if err != nil {
		return err
	}
	defer stopTracing()
	tokens, err := f.tokens.list()
	if err != nil {
		return err
	}
	unsub, err := f.oneClick.tokens()
	if err != nil {
		return err
	}
	// Without connections the gateway leaves Connection and From to the
	// workers (Senders nil); with them it refuses what they would.
	adm := &config.Admission{Limits: f.limits}
	if f.connections != "" || f.from != "" || len(f.allowed) > 0 {
		adm.Senders = map[string]config.Sender{}
		if f.connections != "" {
			conns, err := config.LoadConnections(f.connections, os.LookupEnv, logger)
			if err != nil {
				return withCode(exitUsage, err)
			}
			for name, c := range conns {
				adm.Senders[name] = config.SenderOf(c)
			}
		}
		def := adm.Senders["default"]
		if fs.Changed("smtp-from") {
			def.DefaultFrom = f.from
		}
		if fs.Changed("smtp-allowed-senders") {
			def.Allowed = f.allowed
		}
		adm.Senders["default"] = def
	}
	ln, err := net.Listen("tcp", f.httpAddr)
	if err != nil {
		return withCode(exitUsage, fmt.Errorf("--http-addr: %w", err))
	}
	defer ln.Close()
	c, err := f.connect("gateway")
	if err != nil {
		return err
	}
	defer c.Close()
	store, err := suppress.Open(ctx, c.js, f.names(), suppress.Options{Logger: logger})
	if err != nil {
		return err
	}
	idx, stopIndex, err := startIndex(ctx, f.indexDir, c.js, f.names(), logger)
	if err != nil {
		return err
	}
	defer stopIndex()
	api, err := httpapi.New(httpapi.Config{Names: f.names(), Admission: adm, Tokens: tokens,
		Suppressions: store, Unsubscribe: unsub, Search: idx}, c.js, logger)
	if err != nil {
		return withCode(exitUsage, err)
	}
	con, err := console.New(console.Config{Names: f.names(), JS: c.js, Search: idx, Suppressions: store, Tokens: tokens, Logger: logger})
	if err != nil {
		return withCode(exitUsage, err)
	}
	defer con.Close()
	mux := http.NewServeMux()
	mux.Handle("/", withConsole(api.Handler(), con))
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { fmt.Fprintln(rw, "ok") })
	mux.HandleFunc("GET /readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !c.nc.IsConnected() {
			http.Error(rw, "not ready: NATS disconnected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ready")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	logger.Info("gateway serving the HTTP API", "addr", ln.Addr().String(), "nats", c.nc.ConnectedUrlRedacted(), "tokens", len(tokens))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	logger.Info("gateway stopped")
	return nil
}
