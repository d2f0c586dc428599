package worker

// Tests of jetmail against NATS faults: the server restarted under a
// running worker, a node of a three-node JetStream cluster lost, a node
// that comes back and catches up before another is lost, and several
// workers sharing one consumer.
//
// The cluster these tests build is what the README recommends for
// production, on loopback:
//
//   - three nats-server nodes, each with its own ServerName (n1, n2, n3) and
//     its own JetStream StoreDir;
//   - Cluster{Name: "jetmail", Host: "127.0.0.1", Port: <route port>} and
//     Routes listing all three route URLs (nats://127.0.0.1:<port>) on every
//     node, so any node can start first and the meta group knows its size;
//   - the worker with Replicas: 3 (streams and consumer are R3), connected
//     with all three client URLs, comma-separated, nats.MaxReconnects(-1)
//     and a short ReconnectWait, so it moves to a live node when its own goes;
//   - AckWait 2s in the tests only (default 60s), so that a message whose
//     worker lost its node is redelivered quickly.
//
// What may be duplicated: a message is sent twice only if JetStream
// redelivers it while the worker still holds it. With the worker's own
// connection cut, it keeps the message (progress acks) and retries storing
// the result, so nothing is sent twice (TestNATSConnectionLostWhileStoringSent
// requires none). When the node that leads the consumer goes, the new leader
// may not know what the old one had just delivered and delivers it again at
// once; and a message that waits longer than AckWait in the worker's
// prefetch buffer is redelivered. Both are bounded by what one worker
// holds, Concurrency + Prefetch, which is what these tests allow.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// checkExactlyOnce checks that each of ids has exactly one final result in
// l, and that it is sent, and returns how many copies the SMTP server holds
// beyond one per message.
func checkExactlyOnce(t *testing.T, l *jstest.Results, srv *smtptest.Server, ids []string) (dups int) {
	t.Helper()
	for _, id := range ids {
		var finals []string
		for _, r := range l.Events(id) {
			if r.Final() {
				finals = append(finals, fmt.Sprintf("%s/%d@%d", r.State, r.Status, r.Attempt))
			}
		}
		if len(finals) != 1 || !strings.HasPrefix(finals[0], "sent/200") {
			t.Errorf("%s: final results %v, want exactly one sent", id, finals)
		}
	}
	counts := sinkCounts(t, srv.Messages())
	for _, id := range ids {
		switch n := counts["<"+id+".jetmail@example.com>"]; {
		case n == 0:
			t.Errorf("%s never reached the SMTP server", id)
		case n > 1:
			dups += n - 1
		}
	}
	return dups
}

// publishBatch publishes n requests with Ids prefix0000… as fast as
// JetStream takes them (asynchronously), waits for every PubAck and returns
// the Ids.
func publishBatch(t *testing.T, js jetstream.JetStream, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	futures := make([]jetstream.PubAckFuture, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s%04d", prefix, i)
		data, err := json.Marshal(mailReq(ids[i]))
		if err != nil {
			t.Fatal(err)
		}
		if futures[i], err = js.PublishAsync("mail.send", data, jetstream.WithMsgID(ids[i])); err != nil {
			t.Fatalf("publish %s: %v", ids[i], err)
		}
	}
	timeout := time.After(30 * time.Second)
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish %s: %v", ids[i], err)
		case <-timeout:
			t.Fatalf("publish %s: no acknowledgement within 30s", ids[i])
		}
	}
	return ids
}

// TestNATSRestartMidBatchLosesNothing shuts the JetStream server down while
// a worker is delivering a batch, checks that the worker reports not ready,
// starts the server again on the same port and store, and checks that the
// worker is ready again and every message ends with exactly one final
// result. Duplicates at the SMTP server can only be messages that were in
// flight (sent, but the result not yet stored) when the server went away.
func TestNATSRestartMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	nats := jstest.Start(t)

	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 20 * time.Millisecond}) // slower than publishing: the batch is mid-way when NATS goes
	const concurrency = 8
	b := &testBundle{srv: nats.NATS()}
	b.nc, b.js = nats.Connect(t)
	b.startWorker(t, Config{
		Concurrency: concurrency, AckWait: 2 * time.Second, Retry: fastRetry(8),
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
	})
	_, pubJS := nats.Connect(t)

	const n = 300
	ids := publishBatch(t, pubJS, "nr", n)
	waitMessages(t, srv, n/4)

	nats.Shutdown()
	atShutdown := srv.MessageCount()
	jstest.Eventually(t, 10*time.Second, func() bool { return !b.worker.Ready() })

	nats.Restart()
	jstest.Eventually(t, 30*time.Second, b.worker.Ready)

	l := jstest.StoredResults(t, pubJS, "")
	l.FinalsAtLeast(t, n, 60*time.Second)
	waitIdle(t, pubJS)
	if atShutdown >= n {
		t.Fatalf("the whole batch was delivered before the server went down (%d messages): the fault did not happen mid-batch", atShutdown)
	}
	// A result the worker could not store while NATS was away is stored
	// once it is back (TestNATSConnectionLostWhileStoringSent), so only a
	// message the worker held (in a handler or its prefetch buffer) for
	// longer than AckWait around the restart can be redelivered and sent
	// twice: at most Concurrency + Prefetch.
	dups := checkExactlyOnce(t, l, srv, ids)
	if dups > 2*concurrency {
		t.Errorf("%d duplicates at the SMTP server, more than the %d messages the worker can hold", dups, 2*concurrency)
	}
	t.Logf("NATS restart after %d of %d messages: %d duplicates at the SMTP server, %d result events stored", atShutdown, n, dups, l.Count())
}

// TestClusterNodeLossLosesNothing runs a worker against a three-node
// cluster with R3 streams, stops one node mid-batch and checks that
// delivery goes on and nothing is lost: once with the node the worker is
// connected to, once with another.
func TestClusterNodeLossLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node JetStream clusters take several seconds to form; run without -short")
	}
	t.Parallel()
	for _, stopOwn := range []bool{true, false} {
		name := "stop another node"
		if stopOwn {
			name = "stop the worker's node"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := jstest.StartCluster(t)
			srv := smtptest.NewServer(t)
			srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 20 * time.Millisecond}) // slower than publishing
			const concurrency = 8
			b := &testBundle{srv: c.Node(0)}
			b.nc, b.js = jstest.Connect(t, c.URLs())
			b.startWorker(t, Config{
				Concurrency: concurrency, AckWait: 2 * time.Second, Replicas: 3, Retry: fastRetry(8),
				Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
			})
			pubNC, pubJS := jstest.Connect(t, c.URLs())
			info, err := pubJS.Stream(context.Background(), "JETMAIL_REQUESTS")
			if err != nil {
				t.Fatal(err)
			}
			if r := info.CachedInfo().Config.Replicas; r != 3 {
				t.Fatalf("request stream has %d replicas, want 3", r)
			}

			const n = 200
			ids := publishBatch(t, pubJS, "cl", n)
			waitMessages(t, srv, n/4)

			own := b.nc.ConnectedServerName()
			victim := -1
			for i := range 3 {
				if victim < 0 && (c.Node(i).Name() == own) == stopOwn {
					victim = i
				}
			}
			victimName := c.Node(victim).Name()
			c.Stop(victim)
			atStop := srv.MessageCount()
			stopped := time.Now()
			for _, nc := range []*nats.Conn{b.nc, pubNC} {
				jstest.Eventually(t, 10*time.Second, func() bool { return nc.IsConnected() && nc.ConnectedServerName() != victimName })
			}

			l := jstest.StoredResults(t, pubJS, "")
			l.FinalsAtLeast(t, n, 60*time.Second)
			t.Logf("all finals %v after the stop", time.Since(stopped))
			waitIdle(t, pubJS)
			if atStop >= n {
				t.Fatalf("the whole batch was delivered before %s stopped", victimName)
			}
			// When the node that led the consumer goes, the new leader may
			// not know what the old one had just delivered and delivers it
			// again while the worker still holds it: those messages (at
			// most what the worker holds, Concurrency + Prefetch) may go
			// out twice. Nothing else may.
			dups := checkExactlyOnce(t, l, srv, ids)
			if dups > 2*concurrency {
				t.Errorf("%d duplicates at the SMTP server, more than the %d messages the worker can hold", dups, 2*concurrency)
			}
			t.Logf("stopped %s (worker on %s, now on %s) after %d of %d messages: %d duplicates", victimName, own, b.nc.ConnectedServerName(), atStop, n, dups)
		})
	}
}

// TestSeveralWorkersShareTheLoad runs three workers, each with its own
// connection and registry, on the one durable consumer: every message is
// delivered exactly once and each worker delivers some.
func TestSeveralWorkersShareTheLoad(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 2 * time.Millisecond}) // so no one worker finishes the batch alone
	js := jstest.Start(t).NATS()
	cfg := Config{Concurrency: 4, Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 2}}}
	var workers []*testBundle
	for range 3 {
		b := &testBundle{srv: js}
		b.nc, b.js = jstest.Connect(t, js.ClientURL())
		b.startWorker(t, cfg)
		workers = append(workers, b)
	}
	nc, pubJS := jstest.Connect(t, js.ClientURL())
	l := jstest.WatchResults(t, nc, "mail")

	const n = 300
	ids := publishBatch(t, pubJS, "sw", n)
	l.FinalsAtLeast(t, n, 60*time.Second)
	waitIdle(t, pubJS)
	if srv.FaultHits() < n {
		t.Fatalf("DATA delay fired %d times, want at least %d", srv.FaultHits(), n)
	}
	if dups := checkExactlyOnce(t, l, srv, ids); dups != 0 {
		t.Errorf("%d duplicates", dups)
	}
	if got := srv.MessageCount(); got != n {
		t.Errorf("%d messages at the SMTP server, want %d", got, n)
	}
	var spread []float64
	total := 0.0
	for i, b := range workers {
		ok := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "ok"))
		spread = append(spread, ok)
		total += ok
		if ok == 0 {
			t.Errorf("worker %d delivered nothing", i)
		}
	}
	if total != n {
		t.Errorf("workers delivered %v messages together, want %d", total, n)
	}
	t.Logf("deliveries per worker: %v", spread)
}

// natsProxy forwards TCP connections to a NATS server. Armed with cut, it
// drops the client connection carrying the first chunk the client sends that
// contains cut, without forwarding that chunk: a request lost with its
// connection, as when a node goes away right after the client wrote to it.
type natsProxy struct {
	ln     net.Listener
	target string

	mu   sync.Mutex
	cut  []byte
	cuts int
}

func startProxy(t *testing.T, target string) *natsProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &natsProxy{ln: ln, target: target}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			conns.Store(client, nil)
			conns.Store(server, nil)
			closeBoth := func() { client.Close(); server.Close() }
			wg.Go(func() { defer closeBoth(); _, _ = io.Copy(client, server) })
			wg.Go(func() {
				defer closeBoth()
				buf := make([]byte, 64<<10)
				for {
					n, err := client.Read(buf)
					if n > 0 && p.dropOn(buf[:n]) {
						return
					}
					if n > 0 {
						if _, err := server.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	return p
}

func (p *natsProxy) URL() string { return "nats://" + p.ln.Addr().String() }

// cutOn arms the proxy: the next chunk containing b is dropped with its
// connection.
func (p *natsProxy) cutOn(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = b
}

func (p *natsProxy) dropOn(chunk []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut == nil || !bytes.Contains(chunk, p.cut) {
		return false
	}
	p.cut = nil
	p.cuts++
	return true
}

func (p *natsProxy) cutCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// TestNATSConnectionLostWhileStoringSent: the worker has sent a message and
// its connection to NATS drops just as it publishes the sent result, so the
// request is lost. The worker must store the result once it has reconnected
// and keep the message meanwhile, not leave it to be redelivered and sent
// again: nothing crashed, so there is no reason for a duplicate.
func TestNATSConnectionLostWhileStoringSent(t *testing.T) {
	t.Parallel()
	js := jstest.Start(t).NATS()
	proxy := startProxy(t, js.Addr().String())
	srv := smtptest.NewServer(t)
	b := &testBundle{srv: js}
	b.nc, b.js = jstest.Connect(t, proxy.URL())
	b.startWorker(t, Config{
		// AckWait shorter than the 2s a lost publish waits before it is
		// tried again: the worker must keep the message meanwhile.
		Concurrency: 4, AckWait: 1500 * time.Millisecond, Retry: fastRetry(5),
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com"}},
	})
	_, pubJS := jstest.Connect(t, js.ClientURL())
	proxy.cutOn([]byte(`"State":"sent"`))
	ids := publishBatch(t, pubJS, "lost", 1)
	l := jstest.StoredResults(t, pubJS, "")
	l.FinalsAtLeast(t, 1, 30*time.Second)
	waitIdle(t, pubJS)
	if proxy.cutCount() != 1 {
		t.Fatalf("the proxy cut %d connections, want 1", proxy.cutCount())
	}
	if dups := checkExactlyOnce(t, l, srv, ids); dups != 0 {
		t.Errorf("%d duplicates at the SMTP server", dups)
	}
	t.Logf("events stored: %v", states(l.Events(ids[0])))
}

// TestOneFinalResultPerRequest: when JetStream hands one request to two
// handlers at once (a consumer leader failing over, see the top of this
// file), both may finish it. Only the first final result is stored; the
// second, sent or failed, is dropped as a duplicate, so the request's
// status does not change after it is final.
func TestOneFinalResultPerRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{})
	l := jstest.StoredResults(t, b.js, "")
	ctx := context.Background()
	first := &job{id: "twice", seq: 7, attempt: 1}
	second := &job{id: "twice", seq: 7, attempt: 2}
	for _, p := range []struct {
		j  *job
		ev schema.Result
	}{
		{first, schema.Result{Id: "twice", Attempt: 1, State: schema.StateDeferred, Status: schema.Status202}},
		{second, schema.Result{Id: "twice", Attempt: 2, State: schema.StateSent, Status: schema.Status200}},
		{first, schema.Result{Id: "twice", Attempt: 1, State: schema.StateSent, Status: schema.Status200}},
		{first, schema.Result{Id: "twice", Attempt: 1, State: schema.StateFailed, Status: schema.Status500}},
		// A new publish of the same Id (another stream sequence) is a new
		// request and gets its own final result.
		{&job{id: "twice", seq: 9, attempt: 1}, schema.Result{Id: "twice", Attempt: 1, State: schema.StateSent, Status: schema.Status200}},
	} {
		if err := b.worker.publishResult(ctx, p.j, &p.ev); err != nil {
			t.Fatal(err)
		}
	}
	// A marker published last: once it is seen, everything before it is.
	if err := b.worker.publishResult(ctx, &job{id: "marker", seq: 1, attempt: 1}, &schema.Result{Id: "marker", State: schema.StateSent, Status: schema.Status200}); err != nil {
		t.Fatal(err)
	}
	l.WaitUntil(t, 10*time.Second, "the marker", func(events func(string) []schema.Result) bool { return len(events("marker")) == 1 })
	if diff := cmp.Diff([]string{"deferred/202@1", "sent/200@2", "sent/200@1"}, states(l.Events("twice"))); diff != "" {
		t.Errorf("stored events (-want +got):\n%s", diff)
	}
	if got := testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200")); got != 3 {
		t.Errorf("results_total{sent} = %v, want 3 (the dropped duplicates are not counted)", got)
	}
}

// replicasCurrent reports whether the request and result streams and the
// lanes' consumers have a leader and two replicas that are current, online
// and not lagging: a node that came back has caught up.
func replicasCurrent(js jetstream.JetStream) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var clusters []*jetstream.ClusterInfo
	for _, name := range []string{"JETMAIL_REQUESTS", "JETMAIL_RESULTS"} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return false
		}
		clusters = append(clusters, s.CachedInfo().Cluster)
	}
	for _, l := range config.Lanes {
		c, err := js.Consumer(ctx, "JETMAIL_REQUESTS", schema.DefaultNames().LaneConsumer(l))
		if err != nil {
			return false
		}
		clusters = append(clusters, c.CachedInfo().Cluster)
	}
	for _, ci := range clusters {
		if ci == nil || ci.Leader == "" || len(ci.Replicas) != 2 {
			return false
		}
		for _, r := range ci.Replicas {
			if !r.Current || r.Offline || r.Lag != 0 {
				return false
			}
		}
	}
	return true
}

// streamLeader is the index of the node that leads the request stream.
func streamLeader(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	var leader string
	jstest.Eventually(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, "JETMAIL_REQUESTS")
		if err != nil || s.CachedInfo().Cluster == nil {
			return false
		}
		leader = s.CachedInfo().Cluster.Leader
		return leader != ""
	})
	var i int
	if _, err := fmt.Sscanf(leader, "n%d", &i); err != nil {
		t.Fatalf("leader %q", leader)
	}
	return i - 1
}

// TestClusterNodeComesBack stops the node that leads the request stream
// of a three-node cluster while requests flow in and a worker delivers
// them, starts it again, waits until it has caught up (the streams' and
// consumers' replicas on it current, no lag), then stops the node that
// leads now. With the first node caught up the cluster keeps its quorum,
// so nothing is lost: every acknowledged request ends with one final
// result.
func TestClusterNodeComesBack(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node JetStream clusters take several seconds to form; run without -short")
	}
	t.Parallel()
	c := jstest.StartCluster(t)
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 10 * time.Millisecond})
	const concurrency = 8
	b := &testBundle{}
	b.nc, b.js = jstest.Connect(t, c.URLs())
	b.startWorker(t, Config{
		Concurrency: concurrency, AckWait: 2 * time.Second, Replicas: 3, Retry: fastRetry(8),
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com", PoolSize: 4}},
	})
	_, js := jstest.Connect(t, c.URLs())
	ld := startLoad(t, c.URLs(), "back", 4*time.Millisecond)
	more := func(k int) {
		n := ld.count() + k
		jstest.Eventually(t, 60*time.Second, func() bool { return ld.count() >= n })
	}
	more(200)

	first := streamLeader(t, js)
	c.Stop(first)
	if l := streamLeader(t, js); l == first {
		t.Fatalf("n%d still leads the request stream after it stopped", first+1)
	}
	more(200) // the cluster goes on with two nodes
	c.Start(first)
	back := time.Now()
	jstest.Eventually(t, 90*time.Second, func() bool { return replicasCurrent(js) })
	caughtUp := time.Since(back)
	second := streamLeader(t, js)
	if second == first {
		second = (first + 1) % 3
	}
	c.Stop(second)
	stopped := time.Now()
	more(200)
	ids, again := ld.finish(t)
	dups, finalAt := finishFault(t, b, js, srv, ids, 2*time.Minute)
	// Each leader change may hand out again what the worker held.
	if dups > 2*2*concurrency {
		t.Errorf("%d duplicates, more than the worker can hold over two leader changes", dups)
	}
	t.Logf("stopped n%d, started it again: caught up after %v; stopped n%d: %d requests (%d published again), all final %v after the second stop; %d duplicates",
		first+1, caughtUp.Round(time.Millisecond), second+1, len(ids), again, finalAt.Sub(stopped).Round(time.Millisecond), dups)
}
