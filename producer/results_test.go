package producer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// publishResults publishes result events by hand, as a worker would.
func (b *testBundle) publishResults(t *testing.T, results ...schema.Result) {
	t.Helper()
	for _, r := range results {
		if err := publishResult(t.Context(), b.js, b.names, r); err != nil {
			t.Fatal(err)
		}
	}
}

// consumers is the number of consumers on the result stream.
func (b *testBundle) consumers(t *testing.T) int {
	t.Helper()
	info, err := b.results.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

func TestStatus(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	_, err := b.p.Status(t.Context(), "m1")
	if !errors.Is(err, producer.ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if want := "producer: no result for m1"; err.Error() != want {
		t.Errorf("got message %q, want %q", err, want)
	}

	deferred := result("m1", schema.StateDeferred, schema.Status202, 1)
	next := time.Date(2026, 5, 4, 12, 1, 0, 0, time.UTC)
	deferred.NextAttemptAt = &next
	deferred.Smtp = &schema.SMTPReply{Code: 451, EnhancedCode: "4.3.0", Message: "try later"}
	deferred.Error = "451 4.3.0 try later"
	b.publishResults(t,
		result("m1", schema.StateAccepted, schema.Status202, 1),
		result("other", schema.StateSent, schema.Status200, 1),
		deferred,
	)
	got, err := b.p.Status(t.Context(), "m1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&deferred, got); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}

	for _, id := range []string{"", "a.b", "mail.result.>", strings.Repeat("x", 129)} {
		if _, err := b.p.Status(t.Context(), id); !errors.Is(err, producer.ErrInvalidID) {
			t.Errorf("Status(%q): got %v, want ErrInvalidID", id, err)
		}
		if _, err := b.p.Wait(t.Context(), id); !errors.Is(err, producer.ErrInvalidID) {
			t.Errorf("Wait(%q): got %v, want ErrInvalidID", id, err)
		}
	}
}

func TestWaitFinalBeforeWait(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	final := result("m1", schema.StateFailed, schema.Status404, 1)
	final.Error = "every recipient rejected"
	b.publishResults(t,
		result("m1", schema.StateAccepted, schema.Status202, 1),
		final,
		result("m2", schema.StateAccepted, schema.Status202, 1),
	)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	got, err := b.p.Wait(ctx, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&final, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if n := b.consumers(t); n != 0 {
		t.Errorf("Wait left %d consumers on the result stream, want 0", n)
	}
}

func TestWaitFinalAfterWait(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	b.publishResults(t,
		result("m1", schema.StateAccepted, schema.Status202, 1),
		result("m1", schema.StateDeferred, schema.Status202, 1),
	)
	// The server announces the consumer Wait creates; publishing after
	// that makes sure the final event arrives while Wait is listening.
	nc := b.js.Conn()
	created, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.CREATED.JETMAIL_RESULTS.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	type outcome struct {
		res *schema.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := b.p.Wait(ctx, "m1")
		done <- outcome{res, err}
	}()
	if _, err := created.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no consumer created by Wait: %v", err)
	}
	select {
	case o := <-done:
		t.Fatalf("Wait returned %+v, %v before the final event", o.res, o.err)
	default:
	}

	final := result("m1", schema.StateSent, schema.Status200, 2)
	final.MessageId = "<m1@jetmail>"
	b.publishResults(t, result("m2", schema.StateSent, schema.Status200, 1), final)
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if diff := cmp.Diff(&final, o.res); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if n := b.consumers(t); n != 0 {
		t.Errorf("Wait left %d consumers on the result stream, want 0", n)
	}
}

func TestWaitDeadline(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	b.publishResults(t,
		result("m1", schema.StateAccepted, schema.Status202, 1),
		result("m1", schema.StateDeferred, schema.Status202, 1),
	)
	for _, tc := range []struct {
		id, want string
	}{
		{"m1", "producer: waiting for m1: context deadline exceeded (last state: deferred)"},
		{"m2", "producer: waiting for m2: context deadline exceeded (no result yet)"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		res, err := b.p.Wait(ctx, tc.id)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || res != nil {
			t.Fatalf("got %+v, %v; want context.DeadlineExceeded", res, err)
		}
		if err.Error() != tc.want {
			t.Errorf("got message %q, want %q", err, tc.want)
		}
	}

	errStop := errors.New("user gave up")
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errStop)
	_, err := b.p.Wait(ctx, "m1")
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errStop) {
		t.Errorf("got %v, want context.Canceled and its cause", err)
	}
	if n := b.consumers(t); n != 0 {
		t.Errorf("Wait left %d consumers on the result stream, want 0", n)
	}
}

func TestResults(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	for res, err := range b.p.Results(t.Context(), false) {
		t.Fatalf("empty stream yielded %+v, %v", res, err)
	}

	// More events than a pull fetches at once (500), so that the last
	// ones are delivered after the extra event below is stored.
	var want []schema.Result
	for i := range 600 {
		id := fmt.Sprint("m", i%200)
		want = append(want, result(id, []schema.State{schema.StateAccepted, schema.StateDeferred, schema.StateSent}[i/200], schema.Status202, 1))
	}
	b.publishResults(t, want...)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var got []schema.Result
	for res, err := range b.p.Results(ctx, false) {
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			// Stored after iteration began: not part of this listing.
			b.publishResults(t, result("m3", schema.StateAccepted, schema.Status202, 1))
		}
		got = append(got, *res)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if n := b.consumers(t); n != 0 {
		t.Errorf("Results left %d consumers on the result stream, want 0", n)
	}
}

func TestResultsFollow(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	before := result("m1", schema.StateAccepted, schema.Status202, 1)
	after := result("m1", schema.StateSent, schema.Status200, 1)
	b.publishResults(t, before)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var got []schema.Result
	var last error
	for res, err := range b.p.Results(ctx, true) {
		if err != nil {
			last = err
			continue
		}
		got = append(got, *res)
		switch len(got) {
		case 1:
			b.publishResults(t, after)
		case 2:
			cancel()
		}
	}
	if diff := cmp.Diff([]schema.Result{before, after}, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if !errors.Is(last, context.Canceled) {
		t.Errorf("follow ended with %v, want context.Canceled", last)
	}
}

func TestResultsBadEvent(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	if _, err := b.js.Publish(t.Context(), "mail.result.m1", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	good := result("m2", schema.StateSent, schema.Status200, 1)
	b.publishResults(t, good)

	var got []schema.Result
	var errs []error
	for res, err := range b.p.Results(t.Context(), false) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		got = append(got, *res)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "result event 1 on mail.result.m1") {
		t.Errorf("got errors %v, want one naming event 1", errs)
	}
	if diff := cmp.Diff([]schema.Result{good}, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if _, err := b.p.Status(t.Context(), "m1"); err == nil || errors.Is(err, producer.ErrNotFound) {
		t.Errorf("Status of an undecodable event: got %v, want a decoding error", err)
	}
}
