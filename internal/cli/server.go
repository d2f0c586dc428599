package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/worker"
)

const serverLong = `Run a NATS JetStream server, the same embedded server that 'jetmail worker'
starts when it is given no --nats-url, on its own.

It is a NATS server for development and for measurements (jetmail bench
runs its servers this way): workers, producers and the other commands
connect to it with --nats-url nats://127.0.0.1:4222. Streams are kept under
--data-dir. JetStream syncs its files to disk every 2 minutes; --sync-always
fsyncs every write before acknowledging it (no acknowledged request is lost
when the operating system crashes, at a large cost in throughput).

With --cluster-addr it joins a JetStream cluster: every node needs the same
--cluster-name, a --server-name of its own, a --data-dir of its own, and
--routes naming the cluster addresses of the nodes (its own may be among
them). Three nodes let streams have 3 replicas (jetmail worker --replicas 3).

--http-addr serves NATS monitoring (/varz, /jsz, /routez, ...).

Logs go to stderr. On SIGTERM or SIGINT the server shuts down and the
command exits 0. For production run the official nats-server, configured
as deploy/kubernetes does.`

const serverExample = `  # a server for development; then: jetmail worker --nats-url nats://127.0.0.1:4222
  jetmail server

  # fsync every write, data elsewhere, monitoring on :8222
  jetmail server --data-dir /var/lib/jetmail-nats --sync-always --http-addr 127.0.0.1:8222

  # a three-node cluster on one machine
  jetmail server --addr 127.0.0.1:4222 --data-dir ./n1 --server-name n1 --cluster-name jetmail \
      --cluster-addr 127.0.0.1:6222 --routes nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
  jetmail server --addr 127.0.0.1:4223 --data-dir ./n2 --server-name n2 --cluster-name jetmail \
      --cluster-addr 127.0.0.1:6223 --routes nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224
  jetmail server --addr 127.0.0.1:4224 --data-dir ./n3 --server-name n3 --cluster-name jetmail \
      --cluster-addr 127.0.0.1:6224 --routes nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224`

// serverFlags are the flags of `jetmail server`. The address, data folder
// and syncing are the embedded server's of `jetmail worker`.
type serverFlags struct {
	embedded    embeddedFlags
	maxPayload  int32
	httpAddr    string
	serverName  string
	clusterName string
	clusterAddr string
	routes      []string
	cpuProfile  string
	log         logFlags
}

// defaultMaxPayload is the largest message of worker.StartEmbedded.
const defaultMaxPayload = 8 << 20

func newServerCmd(s stdio) *cobra.Command {
	f := &serverFlags{}
	cmd := &cobra.Command{
		Use:     "server",
		Short:   "Run the embedded NATS JetStream server on its own",
		Long:    serverLong,
		Example: serverExample,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), s)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	f.addFlags(fs)
	return cmd
}

func (f *serverFlags) addFlags(fs *pflag.FlagSet) {
	e := &f.embedded
	fs.StringVar(&e.addr, "addr", "127.0.0.1:4222", "address NATS clients connect to (port 0: a free port, logged at start)")
	fs.StringVar(&e.dataDir, "data-dir", "./jetmail-data", "where the server stores the streams")
	fs.BoolVar(&e.syncAlways, "sync-always", false, "fsync every write before acknowledging it (no loss on an OS crash, much slower)")
	fs.Int32Var(&f.maxPayload, "max-payload", defaultMaxPayload, "largest message the server accepts, in bytes")
	fs.StringVar(&f.httpAddr, "http-addr", "", "address of NATS monitoring (/varz, /jsz, /routez); empty: none")
	fs.StringVar(&f.serverName, "server-name", "", "name of this server, unique in a cluster (default: jetmail-<cluster port> with --cluster-addr)")
	fs.StringVar(&f.clusterName, "cluster-name", "", "name of the JetStream cluster to join (default \"jetmail\" with --cluster-addr)")
	fs.StringVar(&f.clusterAddr, "cluster-addr", "", "address for routes from the other cluster nodes; empty: a single server")
	fs.StringSliceVar(&f.routes, "routes", nil, "cluster addresses of the nodes as nats://host:port, comma-separated")
	fs.StringVar(&f.cpuProfile, "cpu-profile", "", "write a CPU profile (pprof) of the server to this file until it stops (jetmail bench --server-arg=--cpu-profile=FILE)")
	_ = fs.MarkHidden("cpu-profile")
	f.log.addFlags(fs)
}

// hostPort splits a host:port flag value; port 0 becomes NATS's "a free
// port" (-1).
func hostPort(flag, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, badFlags("--%s %q: %w", flag, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, badFlags("--%s %q: the port must be a number from 0 to 65535", flag, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// checkFree fails at once when addr's fixed port is taken: the NATS server
// itself reports it only after a 10 s timeout and without saying why.
func checkFree(flag, addr string, port int) error {
	if port <= 0 {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--%s: cannot listen on %s: %w (is another jetmail server or worker running?)", flag, addr, err)
	}
	_ = ln.Close()
	return nil
}

// clustered reports whether the flags ask for more than the worker's
// single embedded server.
func (f *serverFlags) clustered() bool {
	return f.clusterAddr != "" || f.clusterName != "" || len(f.routes) > 0 || f.serverName != ""
}

// options checks the flags and returns the server's options, or nil
// when worker.StartEmbedded's defaults are what was asked for.
func (f *serverFlags) options(dir string) (*server.Options, error) {
	var errs []error
	host, port, err := hostPort("addr", f.embedded.addr)
	errs = append(errs, err)
	if f.maxPayload <= 0 || f.maxPayload > 64<<20 {
		errs = append(errs, badFlags("--max-payload must be from 1 to %d bytes (64 MiB), got %d", 64<<20, f.maxPayload))
	}
	if (f.clusterName != "" || len(f.routes) > 0) && f.clusterAddr == "" {
		errs = append(errs, badFlags("--cluster-name and --routes need --cluster-addr, the address the other nodes connect to"))
	}
	var routes []*url.URL
	for _, r := range f.routes {
		u, err := url.Parse(strings.TrimSpace(r))
		if err != nil || u.Scheme != "nats" || u.Port() == "" {
			errs = append(errs, badFlags("--routes: %q is not a route URL such as nats://127.0.0.1:6222", r))
			continue
		}
		routes = append(routes, u)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if !f.clustered() && f.httpAddr == "" {
		return nil, checkFree("addr", f.embedded.addr, port)
	}
	// The options of worker.StartEmbedded, with a cluster and monitoring.
	o := &server.Options{
		ServerName: "jetmail-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		MaxPayload: f.maxPayload,
		SyncAlways: f.embedded.syncAlways,
		NoSigs:     true,
		NoLog:      true,
	}
	if f.httpAddr != "" {
		if o.HTTPHost, o.HTTPPort, err = hostPort("http-addr", f.httpAddr); err != nil {
			return nil, err
		}
	}
	if f.clusterAddr != "" {
		ch, cp, err := hostPort("cluster-addr", f.clusterAddr)
		if err != nil {
			return nil, err
		}
		o.Cluster = server.ClusterOpts{Name: f.clusterName, Host: ch, Port: cp}
		if o.Cluster.Name == "" {
			o.Cluster.Name = "jetmail"
		}
		o.Routes = routes
		o.ServerName = "jetmail-" + strconv.Itoa(max(cp, 0))
		errs = append(errs, checkFree("cluster-addr", f.clusterAddr, cp))
	}
	if f.serverName != "" {
		if strings.ContainsAny(f.serverName, " \t\r\n") {
			return nil, badFlags("--server-name must not contain spaces, got %q", f.serverName)
		}
		o.ServerName = f.serverName
	}
	errs = append(errs, checkFree("addr", f.embedded.addr, port))
	if o.HTTPPort > 0 {
		errs = append(errs, checkFree("http-addr", f.httpAddr, o.HTTPPort))
	}
	return o, errors.Join(errs...)
}

// start starts the server: worker.StartEmbedded, or a server of its own
// options when it is to join a cluster or serve monitoring.
func (f *serverFlags) start(logger *slog.Logger) (*server.Server, error) {
	dir, err := filepath.Abs(f.embedded.dataDir)
	if err != nil {
		return nil, withCode(exitUsage, fmt.Errorf("--data-dir: %w", err))
	}
	opts, err := f.options(dir)
	if err != nil {
		return nil, err
	}
	var srv *server.Server
	if opts == nil {
		srv, err = worker.StartEmbedded(worker.EmbeddedConfig{Addr: f.embedded.addr, StoreDir: dir,
			SyncAlways: f.embedded.syncAlways, MaxPayload: f.maxPayload})
		if err != nil {
			return nil, err
		}
		srv.SetLoggerV2(natsLogger{logger}, logger.Enabled(context.Background(), slog.LevelDebug), false, false)
	} else {
		if srv, err = server.NewServer(opts); err != nil {
			return nil, fmt.Errorf("nats server: %w", err)
		}
		srv.SetLoggerV2(natsLogger{logger}, logger.Enabled(context.Background(), slog.LevelDebug), false, false)
		go srv.Start()
		if !srv.ReadyForConnections(10 * time.Second) {
			srv.Shutdown()
			return nil, errors.New("nats server: not ready after 10s")
		}
	}
	attrs := []any{"url", srv.ClientURL(), "data_dir", dir, "sync_always", f.embedded.syncAlways,
		"server_name", srv.Name(), "max_payload", f.maxPayload}
	if a := srv.ClusterAddr(); a != nil {
		attrs = append(attrs, "cluster", opts.Cluster.Name, "cluster_addr", a.String(), "routes", f.routes)
	}
	if a := srv.MonitorAddr(); a != nil {
		attrs = append(attrs, "monitoring_url", "http://"+a.String())
	}
	logger.Info("NATS server started", attrs...)
	return srv, nil
}

// run serves until ctx ends (SIGTERM or SIGINT), then shuts the server
// down and returns nil, so that the command exits 0.
func (f *serverFlags) run(ctx context.Context, s stdio) error {
	logger, err := f.log.logger(s.errOut)
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(f.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	srv, err := f.start(logger)
	if err != nil {
		return err
	}
	stopped := make(chan struct{})
	go func() { srv.WaitForShutdown(); close(stopped) }()
	select {
	case <-ctx.Done():
		logger.Info("stopping NATS server")
		srv.Shutdown()
		<-stopped
		logger.Info("NATS server stopped")
		return nil
	case <-stopped:
		return errors.New("the NATS server stopped by itself; see the log above")
	}
}

// natsLogger writes the NATS server's log through slog: its notices (the
// start-up banner, routes coming and going) at debug, warnings and errors
// as such.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug("nats: " + fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn("nats: " + fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error("nats: " + fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error("nats: " + fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  { n.l.Debug("nats: " + fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any)  { n.l.Debug("nats: " + fmt.Sprintf(format, v...)) }
