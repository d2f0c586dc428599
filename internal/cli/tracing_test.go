package cli

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// traceparentRE is a valid W3C traceparent flagged sampled; the trace Id
// is its first group.
var traceparentRE = regexp.MustCompile(`^00-([0-9a-f]{32})-[0-9a-f]{16}-01$`)

// tracedMessages collects, for each Id, the traceparent of the request
// published on the request subject and of its final sent event, until
// every Id in ids has both.
func tracedMessages(t *testing.T, sub *nats.Subscription, request string, ids []string) (requests, events map[string]string) {
	t.Helper()
	requests, events = map[string]string{}, map[string]string{}
	deadline := time.Now().Add(15 * time.Second)
	for (len(requests) < len(ids) || len(events) < len(ids)) && time.Now().Before(deadline) {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		switch {
		case m.Subject == request:
			requests[m.Header.Get("Nats-Msg-Id")] = m.Header.Get("traceparent")
		case strings.HasPrefix(m.Subject, "mail.result.") && strings.Contains(string(m.Data), `"sent"`):
			events[strings.TrimPrefix(m.Subject, "mail.result.")] = m.Header.Get("traceparent")
		}
	}
	return requests, events
}

// traceOf is the trace Id of a sampled traceparent, or "".
func traceOf(traceparent string) string {
	if m := traceparentRE.FindStringSubmatch(traceparent); m != nil && m[1] != strings.Repeat("0", 32) {
		return m[1]
	}
	return ""
}

// TestSendTraceparentWithoutExporter: with no exporter configured (the
// default), `jetmail send` still sets a traceparent on the request
// (contract §12), and the worker's result events continue its trace.
func TestSendTraceparentWithoutExporter(t *testing.T) {
	t.Parallel()
	url, sub := workerAndWatch(t)
	ids := []string{"tp-send-1", "tp-send-2"}
	for _, id := range ids {
		if r := jetmail(t, testCtx(t), "", "send", "--nats-url", url, "--to", "a@example.com", "--id", id, "--wait"); r.code != 0 {
			t.Fatalf("send %s: exit %d", id, r.code)
		}
	}
	requests, events := tracedMessages(t, sub, "mail.send", ids)
	traces := map[string]bool{}
	for _, id := range ids {
		trace := traceOf(requests[id])
		if trace == "" {
			t.Errorf("%s: the request's traceparent %q is not a valid sampled one", id, requests[id])
			continue
		}
		traces[trace] = true
		if got := traceOf(events[id]); got != trace {
			t.Errorf("%s: the sent event's traceparent %q is not of the request's trace %s", id, events[id], trace)
		}
	}
	if len(traces) == 1 {
		t.Errorf("two sends share one trace %v", traces)
	}
}

// TestSendBatchTraceparent: `jetmail send --batch` sets a traceparent on
// every request, all of the batch run's one trace, also with no exporter
// configured, and the result events continue it.
func TestSendBatchTraceparent(t *testing.T) {
	t.Parallel()
	url, sub := workerAndWatch(t)
	var ids, lines []string
	for i := range 3 {
		ids = append(ids, fmt.Sprintf("tp-batch-%d", i))
		lines = append(lines, fmt.Sprintf(`{"Id":"tp-batch-%d","To":"r%d@example.com"}`, i, i))
	}
	if r := jetmail(t, testCtx(t), strings.Join(lines, "\n")+"\n", "send", "--nats-url", url, "--batch", "-", "--wait"); r.code != 0 {
		t.Fatalf("send --batch: exit %d", r.code)
	}
	requests, events := tracedMessages(t, sub, "mail.bulk", ids)
	batch := traceOf(requests[ids[0]])
	if batch == "" {
		t.Fatalf("the first request's traceparent %q is not a valid sampled one", requests[ids[0]])
	}
	for _, id := range ids {
		if got := traceOf(requests[id]); got != batch {
			t.Errorf("%s: the request's traceparent %q is not of the batch's trace %s", id, requests[id], batch)
		}
		if got := traceOf(events[id]); got != batch {
			t.Errorf("%s: the sent event's traceparent %q is not of the batch's trace %s", id, events[id], batch)
		}
	}
}

// workerAndWatch starts NATS and a worker writing to an outbox, and
// subscribes to everything under mail.> (requests and result events, with
// their headers); it returns the NATS URL and the subscription.
func workerAndWatch(t *testing.T) (string, *nats.Subscription) {
	t.Helper()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync("mail.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return url, sub
}
