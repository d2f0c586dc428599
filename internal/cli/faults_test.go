package cli

// Faults of the worker as a process (issue 12): a SIGTERM while a backlog
// of scheduled requests waits for its time, and a SIGKILL while webhook
// deliveries and cancellations are pending. Each runs `jetmail worker` as
// a process against an in-process JetStream server and an smtptest relay,
// stops it the hard or the soft way, starts another, and checks what a
// user sees: the result events in JETMAIL_RESULTS, the messages at the
// relay (by Message-ID), and the POSTs at an httptest webhook receiver.
// Both run in CI as they are (about 10 s and 20 to 35 s, mostly waiting for
// SendAt and for the webhook consumer's AckWait):
//
//	go test -run '^TestWorkerProcess(SIGTERMScheduled|SIGKILLWebhooksCancels)$' -v ./internal/cli/

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// workerProc is a `jetmail worker` process.
type workerProc struct {
	cmd  *exec.Cmd
	logs *watchBuffer
	done chan struct{}
	code int
}

// startWorkerProc starts `jetmail worker args...` and waits until it
// consumes; it is killed at cleanup if it still runs.
func startWorkerProc(t *testing.T, ctx context.Context, args ...string) *workerProc {
	t.Helper()
	p := &workerProc{logs: newWatchBuffer(), done: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"worker", "--log-format", "json", "--http-addr", "127.0.0.1:0"}, args...)...)
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("worker log:\n%s", p.logs)
		}
	})
	if err := p.logs.waitFor(ctx, `"msg":"worker started"`); err != nil {
		t.Fatalf("%v\n%s", err, p.logs)
	}
	return p
}

// signal sends sig and waits up to d for the process to exit, returning
// its exit code (-1 when killed by a signal).
func (p *workerProc) signal(t *testing.T, sig syscall.Signal, d time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("worker still running %s after %v\n%s", d, sig, p.logs)
		return 0
	}
}

// relayCounts counts the messages at the relay by Id (from the
// Message-ID, <Id.jetmail@example.com>) and when each first arrived.
func relayCounts(t *testing.T, srv *smtptest.Server) (map[string]int, map[string]time.Time) {
	t.Helper()
	counts, first := map[string]int{}, map[string]time.Time{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		id, _, _ := strings.Cut(strings.Trim(msg.Header.Get("Message-Id"), "<>"), ".jetmail@")
		if counts[id]++; counts[id] == 1 {
			first[id] = m.Received
		}
	}
	return counts, first
}

// finalsOf waits until each of ids has a final result in l and returns
// them, failing on an Id with more than one.
func finalsOf(t *testing.T, l *jstest.Results, ids []string, d time.Duration) map[string]schema.Result {
	t.Helper()
	l.WaitUntil(t, d, "a final result for each request", func(events func(string) []schema.Result) bool {
		for _, id := range ids {
			final := false
			for _, r := range events(id) {
				final = final || r.Final()
			}
			if !final {
				return false
			}
		}
		return true
	})
	out := map[string]schema.Result{}
	for _, id := range ids {
		for _, r := range l.Events(id) {
			if !r.Final() {
				continue
			}
			if _, dup := out[id]; dup {
				t.Errorf("%s: more than one final result: %v", id, l.Events(id))
			}
			out[id] = r
		}
	}
	return out
}

// TestWorkerProcessSIGTERMScheduled stops the only worker with SIGTERM
// while 40 scheduled requests wait for their SendAt: 20 fall due while no
// worker runs, 20 after another worker has started. The schedules live in
// JetStream: each request is sent once, not before its time, and has one
// final result.
func TestWorkerProcessSIGTERMScheduled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nats := jstest.Start(t)
	srv := smtptest.NewServer(t)
	args := []string{"--nats-url", nats.URL(), "--smtp-url", srv.URL(), "--smtp-from", "sender@example.com", "--ack-wait", "2s"}
	w1 := startWorkerProc(t, ctx, args...)
	_, js := nats.Connect(t)
	l := jstest.StoredResults(t, js, "")
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}

	now := time.Now()
	// The late half must still be waiting when the second worker starts;
	// under the whole suite with -race a start, 40 publishes and a stop
	// have taken 7 s.
	early, late := now.Add(3*time.Second), now.Add(15*time.Second)
	var ids []string
	sendAt := map[string]time.Time{}
	for i := range 40 {
		id := fmt.Sprintf("sched-%02d", i)
		at := early
		if i%2 == 1 {
			at = late
		}
		ids, sendAt[id] = append(ids, id), at
		if _, _, err := p.Publish(ctx, &schema.Request{Id: id, To: schema.AddressList{"rcpt@example.com"}, Subject: id, Body: "b", SendAt: &at}); err != nil {
			t.Fatal(err)
		}
	}
	l.WaitUntil(t, 20*time.Second, "40 scheduled events", func(events func(string) []schema.Result) bool {
		for _, id := range ids {
			if ev := events(id); len(ev) != 1 || ev[0].State != schema.StateScheduled {
				return false
			}
		}
		return true
	})
	if code := w1.signal(t, syscall.SIGTERM, 40*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit %d, want 0\n%s", code, w1.logs)
	}
	if !strings.Contains(w1.logs.String(), `"msg":"worker stopped"`) {
		t.Errorf("the worker did not stop gracefully\n%s", w1.logs)
	}
	stopped := time.Now()
	// The early half falls due while no worker runs: JetStream publishes
	// them onto their lane, where they wait.
	jstest.Eventually(t, 20*time.Second, func() bool {
		c, err := js.Consumer(ctx, "JETMAIL_REQUESTS", "jetmail-worker")
		return err == nil && c.CachedInfo().NumPending == 20
	})
	if srv.MessageCount() != 0 {
		t.Fatalf("%d messages sent before their time", srv.MessageCount())
	}
	if time.Now().After(late) {
		t.Skipf("the late half fell due before the second worker started (%v after the publishes): the machine was too slow for this test to say anything", time.Since(now).Round(time.Millisecond))
	}
	startWorkerProc(t, ctx, args...)
	restarted := time.Now()

	finals := finalsOf(t, l, ids, time.Minute)
	counts, first := relayCounts(t, srv)
	dups := 0
	for _, id := range ids {
		if fin := finals[id]; fin.State != schema.StateSent {
			t.Errorf("%s: final %s/%d, want sent", id, fin.State, fin.Status)
		}
		switch n := counts[id]; {
		case n == 0:
			t.Errorf("%s never reached the relay", id)
		case n > 1:
			dups += n - 1
		}
		if first[id].Before(sendAt[id]) {
			t.Errorf("%s sent at %s, before its SendAt %s", id, first[id].Format(time.StampMilli), sendAt[id].Format(time.StampMilli))
		}
	}
	if dups != 0 {
		t.Errorf("%d duplicates at the relay; a graceful stop must cause none", dups)
	}
	t.Logf("SIGTERM with 40 scheduled requests waiting: stopped %v before the first 20 were due, restarted %v after; all 40 sent once, %d duplicates",
		early.Sub(stopped).Round(time.Millisecond), restarted.Sub(early).Round(time.Millisecond), dups)
}

// hookReceiver is an httptest webhook receiver that counts POSTs by
// webhook-id. It answers 503 while failing is set, else 200 after delay.
type hookReceiver struct {
	srv *httptest.Server

	mu      sync.Mutex
	failing bool
	delay   time.Duration
	posts   map[string]int
	refused int
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{posts: map[string]int{}, failing: true}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		h.mu.Lock()
		failing, delay := h.failing, h.delay
		if failing {
			h.refused++
		} else {
			h.posts[r.Header.Get("webhook-id")]++
		}
		h.mu.Unlock()
		if failing {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		time.Sleep(delay)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) set(failing bool, delay time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing, h.delay = failing, delay
}

// storedEventIDs reads every event stored in JETMAIL_RESULTS and returns
// the webhook-id each is POSTed with: its Nats-Msg-Id, else
// JETMAIL_RESULTS-<sequence> (package webhook).
func storedEventIDs(t *testing.T, ctx context.Context, js jetstream.JetStream) []string {
	t.Helper()
	s, err := js.Stream(ctx, "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	c, err := js.OrderedConsumer(ctx, "JETMAIL_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("reading the result stream: %v", err)
		}
		md, _ := m.Metadata()
		id := m.Headers().Get(jetstream.MsgIDHeader)
		if id == "" {
			id = fmt.Sprintf("JETMAIL_RESULTS-%d", md.Sequence.Stream)
		}
		ids = append(ids, id)
		if md.Sequence.Stream >= last {
			return ids
		}
	}
}

// TestWorkerProcessSIGKILLWebhooksCancels kills a worker with SIGKILL while
// its webhook receiver is failing (so events wait for their retry) and
// cancellations are under way: some queued requests are cancelled before
// the kill, some queued and scheduled ones while no worker runs, and the
// requests the killed worker held but had not sent are cancelled while
// another worker starts. After the restart every stored event must reach
// the webhook at least once (duplicates counted), each request must have
// one final result, and no cancelled request may reach the relay.
func TestWorkerProcessSIGKILLWebhooksCancels(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nats := jstest.Start(t)
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 50 * time.Millisecond}) // a queue builds up
	hook := newHookReceiver(t)
	key := filepath.Join(t.TempDir(), "hook.key")
	if err := os.WriteFile(key, []byte("whsec_"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	// More deliveries than sessions: at the kill some requests are
	// accepted and wait for a session, not yet sent.
	const concurrency, prefetch = 6, 4
	args := []string{"--nats-url", nats.URL(), "--smtp-url", srv.URL(), "--smtp-from", "sender@example.com",
		"--concurrency", fmt.Sprint(concurrency), "--prefetch", fmt.Sprint(prefetch), "--smtp-pool-size", "2", "--ack-wait", "2s",
		"--webhook", hook.srv.URL, "--webhook-secret-file", key}
	w1 := startWorkerProc(t, ctx, args...)
	_, js := nats.Connect(t)
	l := jstest.StoredResults(t, js, "")
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}

	var ids, queued, scheduled []string
	sendAt := time.Now().Add(12 * time.Second)
	for i := range 20 {
		id := fmt.Sprintf("ws-%02d", i)
		ids, scheduled = append(ids, id), append(scheduled, id)
		if _, _, err := p.PublishAsync(&schema.Request{Id: id, To: schema.AddressList{"rcpt@example.com"}, Subject: id, Body: "b", SendAt: &sendAt}); err != nil {
			t.Fatal(err)
		}
	}
	l.WaitUntil(t, 20*time.Second, "20 scheduled events", func(events func(string) []schema.Result) bool {
		for _, id := range scheduled {
			if ev := events(id); len(ev) != 1 || ev[0].State != schema.StateScheduled {
				return false
			}
		}
		return true
	})
	for i := range 300 {
		id := fmt.Sprintf("wk-%03d", i)
		ids, queued = append(ids, id), append(queued, id)
		if _, _, err := p.PublishAsync(&schema.Request{Id: id, To: schema.AddressList{"rcpt@example.com"}, Subject: id, Body: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	l.WaitUntil(t, 30*time.Second, "40 sent", func(events func(string) []schema.Result) bool {
		n := 0
		for _, id := range queued {
			for _, r := range events(id) {
				if r.State == schema.StateSent {
					n++
				}
			}
		}
		return n >= 40
	})

	// The receiver has been refusing POSTs: events wait for their retry.
	jstest.Eventually(t, 30*time.Second, func() bool { hook.mu.Lock(); defer hook.mu.Unlock(); return hook.refused >= 20 })

	cancelled := map[string]bool{}
	cancelNow := func(id string) {
		res, err := p.Cancel(ctx, id)
		if err != nil {
			t.Errorf("cancel %s: %v", id, err)
			return
		}
		if res.Outcome == producer.Cancelled || res.Outcome == producer.AlreadyCancelled {
			cancelled[id] = true
		} else {
			t.Logf("cancel %s: %s", id, res)
		}
	}
	for _, id := range queued[280:] { // waiting at the end of the queue
		cancelNow(id)
	}
	w1.signal(t, syscall.SIGKILL, 10*time.Second)
	killed := time.Now()
	time.Sleep(300 * time.Millisecond) // anything the dead worker wrote has reached the relay
	atKill, _ := relayCounts(t, srv)

	// While no worker runs: `jetmail cancel` for queued and scheduled ones.
	dead := append(append([]string{}, queued[250:260]...), scheduled[:10]...)
	r := jetmail(t, ctx, "", append([]string{"cancel", "--nats-url", nats.URL()}, dead...)...)
	if r.code != 0 {
		t.Errorf("jetmail cancel while no worker runs: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for line := range strings.Lines(r.stdout) {
		if id, outcome, _ := strings.Cut(strings.TrimSpace(line), " "); outcome == "cancelled" {
			cancelled[id] = true
		}
	}
	// The requests the killed worker held but had not sent: accepted is
	// their latest event. Cancel waits for a worker that may hold them,
	// so these run while the next worker starts.
	var held []string
	for _, id := range queued {
		if ev := l.Events(id); len(ev) > 0 && ev[len(ev)-1].State == schema.StateAccepted && atKill[id] == 0 && !cancelled[id] {
			held = append(held, id)
		}
	}
	var heldWG sync.WaitGroup
	var heldMu sync.Mutex
	for _, id := range held {
		heldWG.Go(func() {
			res, err := p.Cancel(ctx, id)
			heldMu.Lock()
			defer heldMu.Unlock()
			switch {
			case err != nil:
				t.Errorf("cancel %s (held by the killed worker): %v", id, err)
			case res.Outcome == producer.Cancelled || res.Outcome == producer.AlreadyCancelled:
				cancelled[id] = true
			default:
				t.Logf("cancel %s (held by the killed worker): %s", id, res)
			}
		})
	}
	hook.set(false, 100*time.Millisecond) // back, and slow
	startWorkerProc(t, ctx, args...)
	restarted := time.Now()
	heldWG.Wait()

	if time.Now().After(sendAt) {
		t.Fatalf("the scheduled requests fell due before the second worker started: the test ran too slowly to say anything")
	}
	finals := finalsOf(t, l, ids, 2*time.Minute)
	counts, first := relayCounts(t, srv)
	for _, id := range scheduled {
		if counts[id] > 0 && first[id].Before(sendAt) {
			t.Errorf("%s sent at %s, before its SendAt %s", id, first[id].Format(time.StampMilli), sendAt.Format(time.StampMilli))
		}
	}
	dups, nCancelled := 0, 0
	for _, id := range ids {
		fin := finals[id]
		switch {
		case cancelled[id]:
			nCancelled++
			if fin.State != schema.StateCancelled || counts[id] != 0 {
				t.Errorf("%s was cancelled: final %s/%d, %d copies at the relay; want 410 and none", id, fin.State, fin.Status, counts[id])
			}
		case fin.State != schema.StateSent:
			t.Errorf("%s: final %s/%d, want sent", id, fin.State, fin.Status)
		case counts[id] == 0:
			t.Errorf("%s is sent but never reached the relay", id)
		case counts[id] > 1:
			dups += counts[id] - 1
		}
	}
	if nCancelled < 40 {
		t.Errorf("only %d requests cancelled, want at least the 40 queued and scheduled ones", nCancelled)
	}
	if dups > concurrency+prefetch {
		t.Errorf("%d duplicates at the relay, more than the %d requests the killed worker could hold", dups, concurrency+prefetch)
	}

	// Every stored event reaches the webhook, at least once.
	want := storedEventIDs(t, ctx, js)
	byState := map[schema.State]int{}
	for _, id := range ids {
		for _, r := range l.Events(id) {
			byState[r.State]++
		}
	}
	t.Logf("events by state: %v; %d in the stream", byState, len(want))
	var missing []string
	jstest.Eventually(t, 2*time.Minute, func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		missing = missing[:0]
		for _, id := range want {
			if hook.posts[id] == 0 {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	})
	allPosted := time.Since(restarted)
	hook.mu.Lock()
	posts, hookDups := 0, 0
	for _, n := range hook.posts {
		posts += n
		hookDups += n - 1
	}
	refused := hook.refused
	hook.mu.Unlock()
	t.Logf("SIGKILL after 40 were sent, restarted %v later: %d requests, %d cancelled (%d of them held by the killed worker), none of those sent; %d duplicates at the relay; %d events stored, all POSTed to the webhook %v after the restart (%d POSTs refused before, %d accepted, %d duplicates)",
		restarted.Sub(killed).Round(time.Millisecond), len(ids), nCancelled, len(held), dups, len(want), allPosted.Round(time.Millisecond), refused, posts, hookDups)
}
