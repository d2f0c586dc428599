// Package jstest runs real NATS JetStream servers in-process for tests, in
// the spirit of net/http/httptest: a single node or a three-node cluster on
// loopback ports chosen by the OS, each with its store in a temporary
// folder, shut down when the test ends. EnsureStreams creates jetmail's
// streams with the very definitions the worker uses (config.Streams), so no
// test runs against streams that production never has.
package jstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsserver "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// Server is one in-process JetStream server. Its methods are safe for
// concurrent use: a test may restart it while workers use it.
type Server struct {
	mu   sync.Mutex
	srv  *server.Server
	opts server.Options
}

// Start runs a JetStream server on a free loopback port with its store in
// t.TempDir(); tweak, when given, changes its options first (authentication,
// TLS, max_payload). The server is shut down at cleanup.
func Start(t testing.TB, tweak ...func(*server.Options)) *Server {
	t.Helper()
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	for _, f := range tweak {
		f(&opts)
	}
	s := &Server{opts: opts}
	s.srv = natsserver.RunServer(&s.opts)
	// The same port on a restart, so that clients reconnect.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

// Run starts a JetStream server with its store in dir, for examples and
// TestMain, which have no testing.T. The caller shuts it down.
func Run(dir string) *server.Server {
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = dir
	return natsserver.RunServer(&opts)
}

// NATS returns the running server.
func (s *Server) NATS() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// URL is the server's client URL; it stays the same across restarts.
func (s *Server) URL() string { return s.NATS().ClientURL() }

// StoreDir is the folder of the server's streams.
func (s *Server) StoreDir() string { return s.opts.StoreDir }

// Shutdown stops the server and waits until it has stopped. Calling it
// more than once is harmless.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// Restart starts the server again, on the same port and store, after
// Shutdown (which it calls first if the server is running).
func (s *Server) Restart() {
	s.Shutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv = natsserver.RunServer(&s.opts)
}

// Connect opens a client connection to url that reconnects forever, closed
// at cleanup, and a JetStream context on it.
func Connect(t testing.TB, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
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

// Connect opens a client connection to s; see the function Connect.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return Connect(t, s.URL(), opts...)
}

// EnsureStreams creates jetmail's streams and the worker consumer for
// names (zero fields: the contract's defaults), exactly as a worker does at
// start-up.
func EnsureStreams(t testing.TB, js jetstream.JetStream, names schema.Names) *config.Topology {
	t.Helper()
	top, err := config.Streams{Names: names}.Ensure(t.Context(), js)
	if err != nil {
		t.Fatal(err)
	}
	return top
}

// Eventually polls cond every few milliseconds until it is true, and fails
// the test after d. It is the last resort where no event can be awaited.
func Eventually(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Cluster is a JetStream cluster of three nodes routed to each other on
// loopback. Its methods are safe for concurrent use.
type Cluster struct {
	mu    sync.Mutex
	nodes []*server.Server
	opts  []server.Options
}

// StartCluster starts three JetStream nodes (n1, n2, n3) and waits until
// they have elected a meta leader that sees all three. They are shut down
// at cleanup.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	ports := freePorts(t, 6)
	var routes []string
	for _, p := range ports[:3] {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	stores := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	c := &Cluster{}
	// Registered after the TempDirs, so it runs before they are removed.
	t.Cleanup(func() {
		for i := range 3 {
			c.Stop(i)
		}
	})
	for i := range 3 {
		opts := natsserver.DefaultTestOptions
		opts.ServerName = fmt.Sprintf("n%d", i+1)
		opts.Port = ports[3+i]
		opts.JetStream = true
		opts.StoreDir = stores[i]
		opts.Cluster = server.ClusterOpts{Name: "jetmail", Host: "127.0.0.1", Port: ports[i]}
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		c.opts = append(c.opts, opts)
		c.nodes = append(c.nodes, nil)
	}
	for i := range 3 {
		c.Start(i)
	}
	Eventually(t, 30*time.Second, c.Healthy)
	return c
}

// Healthy reports whether every node runs and one of them is the meta
// leader with all three as current peers.
func (c *Cluster) Healthy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.nodes {
		if s == nil || !s.Running() {
			return false
		}
	}
	for _, s := range c.nodes {
		if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == 3 {
			for _, o := range c.nodes {
				if !o.JetStreamIsCurrent() {
					return false
				}
			}
			return true
		}
	}
	return false
}

// URLs are the client URLs of the three nodes, comma-separated, as
// --nats-url takes them.
func (c *Cluster) URLs() string {
	var u []string
	for _, o := range c.opts {
		u = append(u, "nats://127.0.0.1:"+strconv.Itoa(o.Port))
	}
	return strings.Join(u, ",")
}

// Node returns node i (0, 1 or 2), or nil while it is stopped.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Stop shuts node i down and waits until it has stopped.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.nodes[i]; s != nil {
		s.Shutdown()
		s.WaitForShutdown()
		c.nodes[i] = nil
	}
}

// Start starts node i, with its store as it was left.
func (c *Cluster) Start(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes[i] == nil {
		opts := c.opts[i]
		c.nodes[i] = natsserver.RunServer(&opts)
	}
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// TempDir makes a temporary folder for Run, for callers without a
// testing.T; the caller removes it.
func TempDir() string {
	dir, err := os.MkdirTemp("", "jetmail-jstest-")
	if err != nil {
		panic(err)
	}
	return dir
}

// Serve runs run (a service's Run, such as a worker's) in a goroutine
// owned by the test until cleanup, which cancels its context and waits up
// to 30 s for it to return nil. When ready is not nil, Serve waits up to
// 10 s until it reports true. It returns a function that stops the service
// early; calling it more than once is harmless.
func Serve(t testing.TB, run func(context.Context) error, ready func() bool) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("Run did not return within 30s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	if ready != nil {
		Eventually(t, 10*time.Second, ready)
	}
	return stop
}

// Publish publishes a request payload on subject (mail.send when empty)
// with Nats-Msg-Id id (none when empty), as a producer would, and waits
// for JetStream to store it.
func Publish(t testing.TB, js jetstream.JetStream, subject string, data []byte, id string) {
	t.Helper()
	if subject == "" {
		subject = schema.DefaultNames().SendSubject()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := nats.NewMsg(subject)
	m.Data = data
	if id != "" {
		m.Header.Set(jetstream.MsgIDHeader, id)
	}
	if _, err := js.PublishMsg(ctx, m); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) {
			t.Fatalf("publish: %v (%d)", apiErr, apiErr.ErrorCode)
		}
		t.Fatalf("publish: %v", err)
	}
}
