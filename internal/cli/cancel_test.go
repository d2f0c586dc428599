package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// TestCancelBatchLines: `jetmail cancel --batch B` prints one line per
// message of the batch, in Id order, as `jetmail cancel ID…` does, with
// the counts on stderr, and exits 1 when one of them is too late, 0 when
// all are now cancelled or the batch has no message. A message a worker
// holds is waited for, as `cancel ID` does: here the "worker" sees the mark
// and cancels it.
func TestCancelBatchLines(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	_, js := jstest.Connect(t, url)
	jstest.EnsureStreams(t, js, schema.Names{})
	names := schema.DefaultNames()
	ctx := testCtx(t)
	publish := func(id, batch string, state schema.State, status schema.Status, next *time.Time) {
		t.Helper()
		data, _ := json.Marshal(schema.Result{Id: id, BatchId: batch, State: state, Status: status, Attempt: 1,
			NextAttemptAt: next, Time: time.Now().UTC()})
		if _, err := js.Publish(ctx, names.ResultSubject(id), data); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(time.Hour)
	publish("news-sent", "news", schema.StateAccepted, schema.Status202, nil)
	publish("news-sent", "news", schema.StateSent, schema.Status200, nil)
	publish("news-deferred", "news", schema.StateDeferred, schema.Status202, &later)
	publish("news-held", "news", schema.StateAccepted, schema.Status202, nil)
	publish("calm-1", "calm", schema.StateDeferred, schema.Status202, &later)
	publish("other-1", "other", schema.StateAccepted, schema.Status202, nil)
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}
	req := &schema.Request{To: schema.AddressList{"a@example.com"}, Subject: "news"}
	if _, _, err := p.Publish(ctx, req, producer.WithID("news-queued"), producer.WithBatch("news")); err != nil {
		t.Fatal(err)
	}

	// The worker holding news-held: it sees the Id's mark and cancels it.
	kv, err := js.KeyValue(ctx, names.CancelBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(ctx, "id.news-held")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	go func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				publish("news-held", "news", schema.StateCancelled, schema.Status410, nil)
				return
			}
		}
	}()

	r := jetmail(t, ctx, "", "cancel", "--nats-url", url, "--batch", "news")
	want := "news-deferred cancelled\nnews-held cancelled\nnews-queued cancelled\nnews-sent too late (sent)\n"
	if r.code != 1 || r.stdout != want {
		t.Errorf("cancel --batch news: exit %d, stdout %q; want 1 and %q", r.code, r.stdout, want)
	}
	if !strings.Contains(r.stderr, "batch news: 3 cancelled, 1 too late") {
		t.Errorf("cancel --batch news: stderr %q, want the counts", r.stderr)
	}
	// Again: the same lines (cancelled before is cancelled).
	if r := jetmail(t, ctx, "", "cancel", "--nats-url", url, "--batch", "news"); r.code != 1 || r.stdout != want {
		t.Errorf("cancel --batch news again: exit %d, stdout %q; want 1 and %q", r.code, r.stdout, want)
	}
	if r := jetmail(t, ctx, "", "cancel", "--nats-url", url, "--batch", "calm"); r.code != 0 || r.stdout != "calm-1 cancelled\n" {
		t.Errorf("cancel --batch calm: exit %d, stdout %q; want 0 and one line", r.code, r.stdout)
	}
	r = jetmail(t, ctx, "", "cancel", "--nats-url", url, "--batch", "empty")
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "batch empty has no messages") {
		t.Errorf("cancel --batch empty: exit %d, stdout %q, stderr %q; want 0, nothing, and a note", r.code, r.stdout, r.stderr)
	}
	if _, err := kv.Get(ctx, "batch.empty"); err != nil {
		t.Errorf("the empty batch is not marked cancelled: %v", err)
	}
	if ev, err := p.Status(ctx, "other-1"); err != nil || ev.State != schema.StateAccepted {
		t.Errorf("other-1 (another batch): %+v, %v; want it untouched", ev, err)
	}
}
