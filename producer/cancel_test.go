package producer_test

import (
	"errors"
	"testing"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// TestCancelBatchMessages: CancelBatch says what it found and did for
// every message of the batch, in Id order, and its counts agree; messages
// of other batches are left alone, and an empty batch is marked cancelled
// with no messages.
func TestCancelBatchMessages(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.Names{})
	ctx := t.Context()
	names := schema.DefaultNames()
	in := func(r schema.Result, batch string) schema.Result {
		r.BatchId = batch
		r.Time = time.Now().UTC()
		return r
	}
	later := time.Now().Add(time.Hour)
	deferred := result("news-deferred", schema.StateDeferred, schema.Status202, 1)
	deferred.NextAttemptAt = &later
	for _, r := range []schema.Result{
		in(result("news-sent", schema.StateAccepted, schema.Status202, 1), "news"),
		in(result("news-sent", schema.StateSent, schema.Status200, 1), "news"),
		in(result("news-old", schema.StateCancelled, schema.Status410, 0), "news"),
		in(result("news-held", schema.StateAccepted, schema.Status202, 1), "news"),
		in(deferred, "news"),
		in(result("other-1", schema.StateAccepted, schema.Status202, 1), "other"),
	} {
		if err := publishResult(ctx, b.js, names, r); err != nil {
			t.Fatal(err)
		}
	}
	req := &schema.Request{To: schema.AddressList{"a@example.com"}, Subject: "news"}
	if _, _, err := b.p.Publish(ctx, req, producer.WithID("news-queued"), producer.WithBatch("news")); err != nil {
		t.Fatal(err)
	}

	res, err := b.p.CancelBatch(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		id      string
		outcome producer.CancelOutcome
		text    string
	}{
		{"news-deferred", producer.Cancelled, "cancelled"},
		{"news-held", producer.TooLateSending, "too late (sending)"},
		{"news-old", producer.AlreadyCancelled, "cancelled"},
		{"news-queued", producer.Cancelled, "cancelled"},
		{"news-sent", producer.TooLateFinal, "too late (sent)"},
	}
	if len(res.Messages) != len(want) {
		t.Fatalf("CancelBatch: Messages %+v, want %d", res.Messages, len(want))
	}
	for i, w := range want {
		m := res.Messages[i]
		if m.Id != w.id || m.Result.Outcome != w.outcome || m.Result.String() != w.text {
			t.Errorf("Messages[%d] = %s %v %q, want %s %v %q", i, m.Id, m.Result.Outcome, m.Result, w.id, w.outcome, w.text)
		}
		if m.Result.Event == nil || m.Result.Event.Id != w.id || m.Result.Event.BatchId != "news" {
			t.Errorf("Messages[%d] (%s): event %+v, want one of %s in batch news", i, m.Id, m.Result.Event, w.id)
		}
	}
	if res.Cancelled != 3 || res.TooLate != 2 || res.Published != 2 {
		t.Errorf("CancelBatch counts %d cancelled, %d too late, %d published; want 3, 2, 2", res.Cancelled, res.TooLate, res.Published)
	}
	for _, id := range []string{"news-deferred", "news-queued"} {
		if ev, err := b.p.Status(ctx, id); err != nil || ev.State != schema.StateCancelled {
			t.Errorf("status of %s after CancelBatch: %+v, %v; want cancelled", id, ev, err)
		}
	}
	if ev, err := b.p.Status(ctx, "other-1"); err != nil || ev.State != schema.StateAccepted {
		t.Errorf("status of other-1 (another batch): %+v, %v; want it untouched", ev, err)
	}

	// Again: nothing new is published, and each says the same.
	again, err := b.p.CancelBatch(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	if again.Cancelled != 3 || again.TooLate != 2 || again.Published != 0 || len(again.Messages) != 5 {
		t.Errorf("CancelBatch again = %+v, want 3 cancelled (none published), 2 too late", again)
	}

	// A batch with no messages yet: none, and its mark is written.
	empty, err := b.p.CancelBatch(ctx, "later")
	if err != nil || len(empty.Messages) != 0 || empty.Cancelled+empty.TooLate != 0 {
		t.Errorf("CancelBatch of an empty batch = %+v, %v; want nothing", empty, err)
	}
	kv, err := b.js.KeyValue(ctx, names.CancelBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "batch.later"); err != nil {
		t.Errorf("the empty batch's mark: %v", err)
	}
	if _, err := b.p.CancelBatch(ctx, "not a batch"); !errors.Is(err, producer.ErrInvalidID) {
		t.Errorf("CancelBatch of an invalid BatchId: %v, want ErrInvalidID", err)
	}
}
