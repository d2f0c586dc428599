package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// The tests of DELETE /v1/messages/{Id} and DELETE /v1/batches/{BatchId},
// run by TestAPI.

func (oa *openAPI) cancel(t testing.TB, base, id string, opts ...reqOption) httpResult {
	t.Helper()
	return oa.send(t, http.MethodDelete, base+"/v1/messages/"+id, nil, opts...)
}

func (oa *openAPI) cancelBatch(t testing.TB, base, batch string, opts ...reqOption) httpResult {
	t.Helper()
	return oa.send(t, http.MethodDelete, base+"/v1/batches/"+batch, nil, opts...)
}

// event decodes a result event answered by the API.
func event(t testing.TB, res httpResult) schema.Result {
	t.Helper()
	var r schema.Result
	if err := json.Unmarshal(res.body, &r); err != nil {
		t.Fatalf("answer %d is not a result event: %v: %s", res.status, err, res.body)
	}
	return r
}

// waitEvent waits up to 20 s for an event of id in state, and returns it.
func waitEvent(t testing.TB, b *testBundle, id string, state schema.State) schema.Result {
	t.Helper()
	var ev schema.Result
	b.results.WaitUntil(t, 20*time.Second, fmt.Sprintf("a %s event of %s", state, id), func(events func(string) []schema.Result) bool {
		for _, e := range events(id) {
			if e.State == state {
				ev = e
				return true
			}
		}
		return false
	})
	return ev
}

// lastSeq is the stream sequence of the latest stored event of id.
func lastSeq(t testing.TB, b *testBundle, id string) uint64 {
	t.Helper()
	st, err := b.js.Stream(context.Background(), "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), "mail.result."+id)
	if err != nil {
		t.Fatalf("latest event of %s: %v", id, err)
	}
	return m.Sequence
}

// sameJSON fails the test unless a and b are the same JSON value.
func sameJSON(t testing.TB, what string, a, b []byte) {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%s: %v: %s", what, err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%s: %v: %s", what, err, b)
	}
	if !reflect.DeepEqual(va, vb) {
		t.Errorf("%s differ:\n%s\n%s", what, a, b)
	}
}

// sendAt is an RFC 3339 time d from now.
func sendAt(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }

// testAPICancelScheduled: a message scheduled an hour ahead is cancelled:
// 200 and its 410 cancelled event, which GET answers from then on, and its
// schedule is gone. Cancelling it again is 200 with the same event, and
// adds no event and counts nothing.
func testAPICancelScheduled(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	counted := prometheus.NewCounter(prometheus.CounterOpts{Name: "cancelled_total"})
	gateway := serveAPI(t, Config{Cancelled: counted}, b.js, nil)
	body := fmt.Sprintf(`{"Id": "csched-1", "To": "a@example.com", "SendAt": %q, "Metadata": {"order": "42"}}`, sendAt(time.Hour))
	wantStatus(t, oa.post(t, base, body), http.StatusAccepted)
	sched := waitEvent(t, b, "csched-1", schema.StateScheduled)

	first := oa.cancel(t, gateway, "csched-1")
	wantStatus(t, first, http.StatusOK)
	ev := event(t, first)
	if ev.Id != "csched-1" || ev.State != schema.StateCancelled || ev.Status != schema.Status410 || ev.Lane != schema.LaneNormal ||
		ev.Metadata["order"] != "42" || ev.Error == "" || ev.Envelope != nil || ev.MessageId != sched.MessageId {
		t.Errorf("cancelled event %s (scheduled was %+v)", first.body, sched)
	}
	got := oa.get(t, base, "csched-1")
	wantStatus(t, got, http.StatusOK)
	if !bytes.Equal(bytes.TrimSpace(first.body), got.body) {
		t.Errorf("DELETE answered\n%s\nGET answers\n%s", first.body, got.body)
	}
	seq := lastSeq(t, b, "csched-1")

	// The parked request is gone, so it is never published onto its lane.
	st, err := b.js.Stream(context.Background(), "JETMAIL_REQUESTS")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetLastMsgForSubject(context.Background(), "mail.schedule.csched-1"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("the schedule of a cancelled message is still there: %v %v", m, err)
	}

	for _, base := range []string{gateway, base} {
		again := oa.cancel(t, base, "csched-1")
		wantStatus(t, again, http.StatusOK)
		sameJSON(t, "the first and a second cancellation's answers", first.body, again.body)
	}
	if s := lastSeq(t, b, "csched-1"); s != seq {
		t.Errorf("cancelling again added an event (sequence %d, then %d)", seq, s)
	}
	if n := testutil.ToFloat64(counted); n != 1 {
		t.Errorf("Config.Cancelled counted %v, want 1", n)
	}
}

// testAPICancelDeferred: a message deferred between retries, its next
// attempt an hour ahead, is cancelled (200, 410, with the attempt count
// and Message-ID of its deferred event).
func testAPICancelDeferred(t *testing.T, oa *openAPI) {
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "RCPT", Code: 451, Enhanced: "4.3.0", Message: "try later"})
	b := smtpBundle(t, srv, worker.Config{Retry: worker.RetryPolicy{
		Initial: time.Hour, Multiplier: 2, MaxInterval: 2 * time.Hour, MaxAttempts: 5, MaxAge: 48 * time.Hour}})
	base := serveWorker(t, b)
	wantStatus(t, oa.post(t, base, `{"Id": "cdefer-1", "To": "a@example.com"}`), http.StatusAccepted)
	def := waitEvent(t, b, "cdefer-1", schema.StateDeferred)
	res := oa.cancel(t, base, "cdefer-1")
	wantStatus(t, res, http.StatusOK)
	ev := event(t, res)
	if ev.State != schema.StateCancelled || ev.Status != schema.Status410 || ev.Attempt != def.Attempt || ev.MessageId != def.MessageId || ev.MessageId == "" {
		t.Errorf("cancelled event %s, deferred was %+v", res.body, def)
	}
	if got := event(t, oa.get(t, base, "cdefer-1")); got.State != schema.StateCancelled {
		t.Errorf("GET after cancelling: %+v", got)
	}
}

// testAPICancelTooLate: a sent or failed message is 409 with its latest
// event, unchanged.
func testAPICancelTooLate(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	wantStatus(t, oa.post(t, base, `{"Id": "clate-sent", "To": "a@example.com"}`), http.StatusAccepted)
	b.publishRaw(t, []byte(`{"Id": "clate-failed", "Subject": "no recipient"}`), "clate-failed")
	for id, state := range map[string]schema.State{"clate-sent": schema.StateSent, "clate-failed": schema.StateFailed} {
		fin := oa.finalStatus(t, base, id)
		if fin.State != state {
			t.Fatalf("%s ended %+v, want %s", id, fin, state)
		}
		seq := lastSeq(t, b, id)
		res := oa.cancel(t, base, id)
		wantStatus(t, res, http.StatusConflict)
		if ev := event(t, res); !reflect.DeepEqual(ev, fin) {
			t.Errorf("%s: 409 with\n%+v\nthe latest event is\n%+v", id, ev, fin)
		}
		sameJSON(t, id+": the 409's event and GET's", res.body, oa.get(t, base, id).body)
		if s := lastSeq(t, b, id); s != seq {
			t.Errorf("%s: a too-late cancellation added an event", id)
		}
	}
}

// testAPICancelWhileSending: a message whose SMTP transaction has begun is
// too late: the answer waits for the worker's outcome and is 409 with the
// sent event, and the message is delivered once.
func testAPICancelWhileSending(t *testing.T, oa *openAPI) {
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 1500 * time.Millisecond, Times: 1})
	b := smtpBundle(t, srv, worker.Config{})
	base := serveWorker(t, b)
	wantStatus(t, oa.post(t, base, `{"Id": "csending-1", "To": "a@example.com"}`), http.StatusAccepted)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.WaitFaultHits(ctx, 1); err != nil {
		t.Fatal(err)
	}
	res := oa.cancel(t, base, "csending-1")
	wantStatus(t, res, http.StatusConflict)
	if ev := event(t, res); ev.State != schema.StateSent || ev.Status != schema.Status200 {
		t.Errorf("409 with %s, want the sent event", res.body)
	}
	if n := srv.MessageCount(); n != 1 {
		t.Errorf("%d messages delivered, want 1", n)
	}
}

// testAPICancelUnknown: an Id nobody knows, or not an Id, is a 404. The
// cancellation of a valid unknown Id is remembered: a request with that Id
// posted afterwards is cancelled by the worker, not sent.
func testAPICancelUnknown(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	for _, id := range []string{"cunknown-1", "bad.id", "has%20space", strings.Repeat("x", 129)} {
		res := oa.cancel(t, base, id)
		wantStatus(t, res, http.StatusNotFound)
		if a := res.answer(t); a.Error != "unknown Id" {
			t.Errorf("%s: answer %+v", id, a)
		}
	}
	wantStatus(t, oa.post(t, base, `{"Id": "cunknown-1", "To": "a@example.com"}`), http.StatusAccepted)
	if fin, _ := b.results.Final(t, "cunknown-1"); fin.State != schema.StateCancelled || fin.Status != schema.Status410 {
		t.Errorf("a request posted after its Id was cancelled ended %+v, want cancelled", fin)
	}
}

// testAPICancelBatch: every scheduled message of a batch is cancelled
// (200 with the counts), those already sent count as too late, other
// batches are untouched; again is the same answer; an unknown batch is
// zeros; a request of the batch published later is cancelled too.
func testAPICancelBatch(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	counted := prometheus.NewCounter(prometheus.CounterOpts{Name: "cancelled_total"})
	gateway := serveAPI(t, Config{Cancelled: counted}, b.js, nil)
	later := sendAt(time.Hour)
	var items []string
	scheduled := map[string]string{} // Id → batch
	for i, batch := range []string{"news-1", "news-1", "news-1", "news-2", "news-3"} {
		id := fmt.Sprintf("cbatch-%d", i)
		scheduled[id] = batch
		items = append(items, fmt.Sprintf(`{"Id": %q, "To": "a@example.com", "BatchId": %q, "SendAt": %q}`, id, batch, later))
	}
	items = append(items, `{"Id": "cbatch-sent", "To": "a@example.com", "BatchId": "news-2"}`)
	for _, it := range batchResults(t, oa.postBatch(t, base, "", "["+strings.Join(items, ",")+"]")) {
		if it.Status != http.StatusAccepted {
			t.Fatalf("item %+v", it)
		}
	}
	for id := range scheduled {
		waitEvent(t, b, id, schema.StateScheduled)
	}
	b.results.Final(t, "cbatch-sent")

	for _, c := range []struct {
		base, batch string
		want        string
	}{
		{gateway, "news-1", `{"Cancelled":3,"TooLate":0}`},
		{gateway, "news-2", `{"Cancelled":1,"TooLate":1}`},
		{base, "news-1", `{"Cancelled":3,"TooLate":0}`}, // again
		{base, "nobody", `{"Cancelled":0,"TooLate":0}`},
	} {
		res := oa.cancelBatch(t, c.base, c.batch)
		wantStatus(t, res, http.StatusOK)
		if string(res.body) != c.want+"\n" {
			t.Errorf("DELETE /v1/batches/%s: %s, want %s", c.batch, res.body, c.want)
		}
	}
	for id, batch := range scheduled {
		ev := event(t, oa.get(t, base, id))
		want := schema.StateCancelled
		if batch == "news-3" {
			want = schema.StateScheduled
		}
		if ev.State != want || ev.BatchId != batch || ev.Lane != schema.LaneBulk {
			t.Errorf("%s of %s: %+v, want %s in the bulk lane", id, batch, ev, want)
		}
	}
	if ev := event(t, oa.get(t, base, "cbatch-sent")); ev.State != schema.StateSent {
		t.Errorf("cbatch-sent: %+v", ev)
	}
	if n := testutil.ToFloat64(counted); n != 4 {
		t.Errorf("Config.Cancelled counted %v, want 4", n)
	}
	// The cancellation of a batch is remembered: a request of it published
	// afterwards is cancelled by the worker, not sent.
	checkItems(t, batchResults(t, oa.postBatch(t, base, "", `[{"Id": "cbatch-later", "To": "a@example.com", "BatchId": "news-1"}]`)),
		[]itemWant{{status: 202, id: "cbatch-later"}})
	if fin, _ := b.results.Final(t, "cbatch-later"); fin.State != schema.StateCancelled {
		t.Errorf("a request of a cancelled batch published afterwards ended %+v, want cancelled", fin)
	}
}

// testAPICancelBatchInvalid: a BatchId that is not an Id is a 400.
func testAPICancelBatchInvalid(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	base := serveWorker(t, b)
	for _, batch := range []string{"bad.id", "has%20space", strings.Repeat("x", 129), "%C3%A9t%C3%A9"} {
		res := oa.cancelBatch(t, base, batch)
		wantStatus(t, res, http.StatusBadRequest)
		if a := res.answer(t); a.Error != "BatchId must match [A-Za-z0-9_-]{1,128}" {
			t.Errorf("%s: answer %+v", batch, a)
		}
	}
}

// testAPICancelNATSError: with the NATS connection closed, or without the
// streams and bucket a worker creates, both cancel routes answer 500;
// invalid Ids are still answered without NATS.
func testAPICancelNATSError(t *testing.T, oa *openAPI) {
	b := setup(t, worker.Config{})
	nc, js := b.nats.Connect(t)
	closed := serveAPI(t, Config{}, js, nil)
	nc.Close()
	_, bareJS := jstest.Start(t).Connect(t)
	bare := serveAPI(t, Config{}, bareJS, nil)
	for _, c := range []struct {
		name, base, err string
	}{
		{"closed", closed, "connection closed"},
		{"no bucket", bare, config.DefaultStreams().Names.CancelBucket},
	} {
		for _, res := range []httpResult{oa.cancel(t, c.base, "some-id"), oa.cancelBatch(t, c.base, "some-batch")} {
			wantStatus(t, res, http.StatusInternalServerError)
			if a := res.answer(t); !strings.Contains(a.Error, c.err) {
				t.Errorf("%s: answer %+v, want an Error with %q", c.name, a, c.err)
			}
		}
		wantStatus(t, oa.cancel(t, c.base, "bad.id"), http.StatusNotFound)
		wantStatus(t, oa.cancelBatch(t, c.base, "bad.id"), http.StatusBadRequest)
	}
}
