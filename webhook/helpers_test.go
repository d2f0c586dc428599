package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsserver "github.com/nats-io/nats-server/v2/test"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/jetmail/jetmail/schema"
)

// natsServer is an in-process JetStream server on a free port with its
// store in a temporary folder, that can be restarted on the same port and
// store.
type natsServer struct {
	mu   sync.Mutex
	srv  *server.Server
	opts server.Options
}

func startNATS(t testing.TB) *natsServer {
	t.Helper()
	n := &natsServer{opts: natsserver.DefaultTestOptions}
	n.opts.Port = -1
	n.opts.JetStream = true
	n.opts.StoreDir = t.TempDir()
	n.srv = natsserver.RunServer(&n.opts)
	n.opts.Port = n.srv.Addr().(*net.TCPAddr).Port // the same port on restart
	t.Cleanup(func() { n.mu.Lock(); n.srv.Shutdown(); n.mu.Unlock() })
	return n
}

func (n *natsServer) url() string { n.mu.Lock(); defer n.mu.Unlock(); return n.srv.ClientURL() }

// stop shuts the server down and waits until it has.
func (n *natsServer) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// start starts it again on the same port and store.
func (n *natsServer) start() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.srv = natsserver.RunServer(&n.opts)
}

// connect opens a client that reconnects for ever, closed at cleanup.
func connect(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// createResultStream creates the result stream as the worker does
// (worker/streams.go), with mail.event.> added for the events v2 adds.
func createResultStream(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	names := schema.DefaultNames()
	_, err := js.CreateOrUpdateStream(context.Background(), jetstream.StreamConfig{
		Name:              names.ResultStream,
		Subjects:          []string{names.ResultSubjects(), names.Prefix + ".event.>"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxAge:            7 * 24 * time.Hour,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		MaxMsgsPerSubject: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// event is one event as published: what the receiver must get.
type event struct {
	id   string // the expected webhook-id
	body []byte
}

// publishResult stores a result event as the worker does, with a
// Nats-Msg-Id of Id.state.seq.attempt.
func publishResult(t testing.TB, js jetstream.JetStream, id string, state schema.State) event {
	t.Helper()
	ev := schema.Result{Id: id, State: state, Status: schema.Status202, Attempt: 1,
		Metadata: map[string]string{"order": "ünïcode ✓ " + id}, Time: time.Now().UTC()}
	if state.Final() {
		ev.Status = schema.Status200
	}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	msgID := fmt.Sprintf("%s.%s.1.1", id, state)
	return publishRaw(t, js, schema.DefaultNames().ResultSubject(id), msgID, data)
}

// publishRaw stores data on subject, with a Nats-Msg-Id unless msgID is
// empty.
func publishRaw(t testing.TB, js jetstream.JetStream, subject, msgID string, data []byte) event {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = data
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if msgID == "" {
		msgID = schema.DefaultNames().ResultStream + "-" + strconv.FormatUint(ack.Sequence, 10)
	}
	return event{id: msgID, body: data}
}

func publishMany(t testing.TB, js jetstream.JetStream, prefix string, n int) []event {
	t.Helper()
	var evs []event
	for i := range n {
		evs = append(evs, publishResult(t, js, fmt.Sprintf("%s-%d", prefix, i), schema.StateSent))
	}
	return evs
}

// receiver is a webhook endpoint that checks every request with its own
// HMAC code (not Verify), records what it got, and fails on command.
type receiver struct {
	srv     *httptest.Server
	key     []byte
	release chan struct{}
	once    sync.Once

	mu        sync.Mutex
	fail      int  // answer 500 to this many more requests
	hang      int  // hang this many more requests past the client's timeout
	down      bool // answer 500 to every request
	hangAll   bool // hang every request
	redirect  string
	failed    int // requests answered 500 because of fail or down
	nFailed   atomic.Int64
	clock     func() time.Time // the receiver's clock; default time.Now
	hung      int              // requests hung
	inflight  int
	maxFlight int
	requests  []string            // the webhook-id of every request
	delivered map[string][][]byte // webhook-id → bodies answered 2xx
	problems  []string            // bad signatures or headers
}

func newReceiver(t testing.TB, key []byte) *receiver {
	t.Helper()
	r := &receiver{key: key, release: make(chan struct{}), delivered: map[string][][]byte{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(func() {
		r.unblock()
		r.srv.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, p := range r.problems {
			t.Errorf("receiver: %s", p)
		}
	})
	return r
}

// unblock answers every hung request, and every later one that would
// hang, with 503.
func (r *receiver) unblock() { r.once.Do(func() { close(r.release) }) }

func (r *receiver) set(f func(r *receiver)) { r.mu.Lock(); f(r); r.mu.Unlock() }

// check verifies the request as an independent receiver would.
func (r *receiver) check(req *http.Request, body []byte) string {
	id, ts, sigs := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
	switch {
	case req.Method != http.MethodPost:
		return "method " + req.Method
	case req.Header.Get("Content-Type") != "application/json":
		return "Content-Type " + req.Header.Get("Content-Type")
	case req.Header.Get("User-Agent") != "jetmail":
		return "User-Agent " + req.Header.Get("User-Agent")
	case id == "":
		return "no webhook-id"
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "webhook-timestamp " + ts
	}
	now := time.Now()
	if r.clock != nil {
		now = r.clock()
	}
	if d := now.Sub(time.Unix(unix, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Sprintf("webhook-timestamp %s is %s away", ts, d)
	}
	if !slices.Contains(strings.Fields(sigs), independentSig(r.key, id, ts, body)) {
		return fmt.Sprintf("webhook-signature %q does not sign id %s ts %s and the body", sigs, id, ts)
	}
	return ""
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	if err != nil {
		r.problems = append(r.problems, "reading the body: "+err.Error())
	} else if p := r.check(req, body); p != "" {
		r.problems = append(r.problems, p)
	}
	r.requests = append(r.requests, id)
	r.inflight++
	r.maxFlight = max(r.maxFlight, r.inflight)
	defer func() { r.mu.Lock(); r.inflight--; r.mu.Unlock() }()
	switch {
	case r.hangAll || r.hang > 0:
		r.hang--
		r.hung++
		r.mu.Unlock()
		select {
		case <-req.Context().Done(): // the client gave up
		case <-r.release:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		return
	case r.redirect != "":
		r.mu.Unlock()
		http.Redirect(w, req, r.redirect, http.StatusTemporaryRedirect)
		return
	case r.down || r.fail > 0:
		r.fail--
		r.failed++
		r.nFailed.Add(1)
		r.mu.Unlock()
		http.Error(w, "not now", http.StatusInternalServerError)
		return
	}
	r.delivered[id] = append(r.delivered[id], body)
	r.mu.Unlock()
	fmt.Fprintf(w, "ok %s", id)
}

// count returns how many distinct ids were delivered.
func (r *receiver) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.delivered) }

// attempted returns how many distinct ids were requested.
func (r *receiver) attempted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := map[string]bool{}
	for _, id := range r.requests {
		ids[id] = true
	}
	return len(ids)
}

func (r *receiver) requestCount() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.requests) }

// hookTo is a webhook to r.
func hookTo(name string, r *receiver, states ...schema.State) Config {
	return Config{Name: name, URL: r.srv.URL + "/hooks/" + name + "?token=tok-" + name, Secret: r.key, States: states}
}

// fastOptions are Options that make tests quick: short timeout, retries
// within milliseconds, the pending gauge refreshed often.
func fastOptions() Options {
	return Options{
		Timeout:         2 * time.Second,
		Retry:           RetryPolicy{Initial: 10 * time.Millisecond, Multiplier: 2, MaxInterval: 100 * time.Millisecond},
		PendingInterval: 20 * time.Millisecond,
	}
}

// running is a Dispatcher running in a goroutine owned by the test.
type running struct {
	d    *Dispatcher
	reg  *prometheus.Registry
	stop func() // cancels Run and waits for it to return
}

// startDispatcher runs a Dispatcher for hooks until stop or cleanup, and
// waits until each hook's consumer exists.
func startDispatcher(t testing.TB, js jetstream.JetStream, hooks []Config, opts Options, logger *slog.Logger) *running {
	t.Helper()
	r := newDispatcher(t, js, hooks, opts, logger)
	r.start(t)
	waitConsumers(t, js, hooks)
	return r
}

// newDispatcher makes a Dispatcher with its own registry.
func newDispatcher(t testing.TB, js jetstream.JetStream, hooks []Config, opts Options, logger *slog.Logger) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry()}
	if logger == nil {
		logger = testLogger()
	}
	d, err := New(js, schema.DefaultNames(), hooks, r.reg, logger, opts)
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	return r
}

// start runs the Dispatcher in a goroutine until stop or cleanup.
func (r *running) start(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.d.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("Run did not return within 20s of its context ending")
			}
		})
	}
	t.Cleanup(r.stop)
}

// waitConsumers waits until each hook's consumer exists.
func waitConsumers(t testing.TB, js jetstream.JetStream, hooks []Config) {
	t.Helper()
	for _, h := range hooks {
		waitFor(t, 10*time.Second, "consumer of "+h.Name, func() bool {
			_, err := js.Consumer(context.Background(), schema.DefaultNames().ResultStream, ConsumerPrefix+h.Name)
			return err == nil
		})
	}
}

// deliveries returns jetmail_webhook_deliveries_total{webhook, outcome}
// as the registry has it, or -1 when it has no such series.
func (r *running) deliveries(hook, outcome string) int {
	return int(r.value("jetmail_webhook_deliveries_total", hook, outcome))
}

// pending returns jetmail_webhook_pending{webhook} as the registry has it.
func (r *running) pending(hook string) float64 { return r.value("jetmail_webhook_pending", hook, "") }

func (r *running) value(name, hook, outcome string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range mfs {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["webhook"] != hook || labels["outcome"] != outcome {
				continue
			}
			if s.Counter != nil {
				return s.GetCounter().GetValue()
			}
			return s.GetGauge().GetValue()
		}
	}
	return -1
}

// wantDeliveries asserts the deliveries counters of hook with testutil.
func (r *running) wantDeliveries(t testing.TB, hook string, ok, retry, dropped int) {
	t.Helper()
	want := fmt.Sprintf(`# HELP jetmail_webhook_deliveries_total %s
# TYPE jetmail_webhook_deliveries_total counter
jetmail_webhook_deliveries_total{outcome="dropped",webhook=%[2]q} %[5]d
jetmail_webhook_deliveries_total{outcome="ok",webhook=%[2]q} %[3]d
jetmail_webhook_deliveries_total{outcome="retry",webhook=%[2]q} %[4]d
`, deliveriesHelp, hook, ok, retry, dropped)
	if err := testutil.GatherAndCompare(onlyHook{r.reg, hook}, strings.NewReader(want), "jetmail_webhook_deliveries_total"); err != nil {
		t.Error(err)
	}
}

const deliveriesHelp = "Webhook POSTs of events, by webhook and outcome (ok: a 2xx answer; retry: failed, tried again later; dropped: given up after the maximum age)."

// onlyHook gathers the series of one webhook.
type onlyHook struct {
	g    prometheus.Gatherer
	hook string
}

func (o onlyHook) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := o.g.Gather()
	for _, f := range mfs {
		f.Metric = slices.DeleteFunc(f.Metric, func(m *dto.Metric) bool {
			return !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == "webhook" && l.GetValue() == o.hook
			})
		})
	}
	return mfs, err
}

// waitFor polls cond every few milliseconds until it holds or d passes:
// the last resort where no event can be awaited.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// consumerIdle reports whether the hook's consumer has settled every
// event stored so far. (NumPending alone lags a publish by a moment: the
// stream tells its consumers asynchronously.)
func consumerIdle(t testing.TB, js jetstream.JetStream, hook string) bool {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, schema.DefaultNames().ResultStream)
	if err != nil {
		return false
	}
	c, err := js.Consumer(ctx, schema.DefaultNames().ResultStream, ConsumerPrefix+hook)
	if err != nil {
		return false
	}
	info := c.CachedInfo()
	return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= s.CachedInfo().State.LastSeq
}

// testLogger logs to stderr when JETMAIL_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("JETMAIL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lockedBuffer is a bytes.Buffer safe for concurrent use, for logs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }
