package producer_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func validRequest() *schema.Request {
	return &schema.Request{
		To:       schema.AddressList{`"Jan Kowalski" <jan@example.com>`},
		From:     "shop@example.com",
		Subject:  "Zamówienie 42",
		Body:     "<p>Dziękujemy!</p>",
		IsHtml:   true,
		Metadata: map[string]string{"order": "42"},
	}
}

// storedMsg reads the message of an ack back from the stream.
func storedMsg(t *testing.T, s jetstream.Stream, ack *jetstream.PubAck) *jetstream.RawStreamMsg {
	t.Helper()
	m, err := s.GetMsg(t.Context(), ack.Sequence)
	if err != nil {
		t.Fatalf("reading back message %d: %v", ack.Sequence, err)
	}
	return m
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPublishSetsIDAndMsgID(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	req := validRequest()
	want := *req
	id, ack, err := b.p.Publish(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !schema.ValidID(id) || req.Id != id {
		t.Fatalf("got Id %q and req.Id %q, want one valid Id in both", id, req.Id)
	}
	if ack.Stream != "JETMAIL_REQUESTS" || ack.Duplicate {
		t.Errorf("got ack %+v, want a new message in JETMAIL_REQUESTS", ack)
	}

	m := storedMsg(t, b.requests, ack)
	if m.Subject != "mail.send" {
		t.Errorf("stored on %q, want mail.send", m.Subject)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != id {
		t.Errorf("Nats-Msg-Id header is %q, want %q", got, id)
	}
	got, err := schema.Decode(m.Data)
	if err != nil {
		t.Fatalf("stored body does not decode: %v\n%s", err, m.Data)
	}
	want.Id = id
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("stored request (-want +got):\n%s", diff)
	}
}

func TestPublishKeepsGivenIDAndTokens(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	req := validRequest()
	req.Id = "order-42_confirmation"
	id, ack, err := b.p.Publish(t.Context(), req, producer.WithSubjectTokens("acme", "high"))
	if err != nil {
		t.Fatal(err)
	}
	if id != "order-42_confirmation" {
		t.Errorf("got Id %q, want the request's own", id)
	}
	m := storedMsg(t, b.requests, ack)
	if m.Subject != "mail.send.acme.high" || m.Header.Get(jetstream.MsgIDHeader) != id {
		t.Errorf("stored on %q with Nats-Msg-Id %q, want mail.send.acme.high and %q",
			m.Subject, m.Header.Get(jetstream.MsgIDHeader), id)
	}
}

func TestPublishDuplicate(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	req := validRequest()
	req.Id = "same-id"
	_, first, err := b.p.Publish(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	// Raw payload and typed request alike are deduplicated on the Id.
	_, second, err := b.p.PublishJSON(t.Context(), []byte(`{"id":"same-id","to":"a@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || second.Sequence != first.Sequence {
		t.Errorf("got acks %+v and %+v, want the second a duplicate of the first", first, second)
	}
	if n := streamMsgs(t, b.requests); n != 1 {
		t.Errorf("stream holds %d messages, want 1", n)
	}
}

func TestPublishInvalid(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	req := &schema.Request{To: schema.AddressList{"not an address"}, Importance: "urgent"}
	wantFields := []schema.FieldError{
		{Field: "To[0]", Message: `not a valid email address: "not an address"`},
		{Field: "Importance", Message: `want High, Normal or Low, got "urgent"`},
	}
	check := func(t *testing.T, err error) {
		t.Helper()
		var ve *schema.ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("got error %v, want a *schema.ValidationError", err)
		}
		if diff := cmp.Diff(wantFields, ve.Fields); diff != "" {
			t.Errorf("field errors (-want +got):\n%s", diff)
		}
	}

	_, _, err := b.p.Publish(t.Context(), req)
	check(t, err)
	_, _, err = b.p.PublishAsync(req)
	check(t, err)
	if req.Id != "" {
		t.Errorf("invalid request got Id %q, want it left empty", req.Id)
	}
	data, _ := json.Marshal(req)
	_, _, err = b.p.PublishJSON(t.Context(), data)
	check(t, err)
	_, _, err = b.p.PublishJSONAsync(data)
	check(t, err)

	_, _, err = b.p.PublishJSON(t.Context(), []byte(`{"To": `))
	var ve *schema.ValidationError
	if !errors.As(err, &ve) || len(ve.Fields) != 1 || ve.Fields[0].Field != "" {
		t.Errorf("got %v for broken JSON, want one payload-level field error", err)
	}

	if n := streamMsgs(t, b.requests); n != 0 {
		t.Errorf("stream holds %d messages, want none", n)
	}
}

func TestPublishJSONKeepsPayload(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames(), producer.WithIDFunc(func() string { return "generated-1" }))

	// Written for the SMTP connector: lower-case keys, a separated string
	// of recipients, IsHtml as a string.
	withID := []byte(`{"to": "a@example.com; \"B\" <b@example.com>", "subject": "Cześć", "body": "<b>hi</b>", "isHtml": "true", "ID": "connector-7"}`)
	withoutID := []byte(`{"To":"a@example.com","Body":"no Id here"}` + "\n")

	for _, tc := range []struct {
		name   string
		data   []byte
		wantID string
	}{
		{"payload Id", withID, "connector-7"},
		{"header only", withoutID, "generated-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, ack, err := b.p.PublishJSON(t.Context(), tc.data)
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.wantID {
				t.Errorf("got Id %q, want %q", id, tc.wantID)
			}
			m := storedMsg(t, b.requests, ack)
			if string(m.Data) != string(tc.data) {
				t.Errorf("stored payload\n%s\nwant it unchanged:\n%s", m.Data, tc.data)
			}
			if got := m.Header.Get(jetstream.MsgIDHeader); got != tc.wantID {
				t.Errorf("Nats-Msg-Id header is %q, want %q", got, tc.wantID)
			}
		})
	}
}

func TestNoStream(t *testing.T) {
	t.Parallel()
	js := startJetStream(t) // JetStream, but no jetmail streams
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Publish", func(t *testing.T) {
		t.Parallel()
		_, _, err := p.Publish(t.Context(), validRequest(), producer.WithSubjectTokens("acme"))
		if !errors.Is(err, producer.ErrNoStream) || !errors.Is(err, jetstream.ErrNoStreamResponse) {
			t.Fatalf("got %v, want ErrNoStream wrapping jetstream.ErrNoStreamResponse", err)
		}
		if want := "producer: no JetStream stream for mail.send.acme: is a worker running?"; err.Error() != want {
			t.Errorf("got message %q, want %q", err, want)
		}
	})
	t.Run("PublishAsync", func(t *testing.T) {
		t.Parallel()
		_, f, err := p.PublishAsync(validRequest())
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-f.Err():
			if !errors.Is(err, jetstream.ErrNoStreamResponse) {
				t.Errorf("future got %v, want jetstream.ErrNoStreamResponse", err)
			}
		case ack := <-f.Ok():
			t.Errorf("got ack %+v, want an error", ack)
		case <-time.After(5 * time.Second):
			t.Error("no ack and no error")
		}
	})
	const wantResults = "producer: no JetStream stream JETMAIL_RESULTS: is a worker running?"
	t.Run("Status", func(t *testing.T) {
		t.Parallel()
		_, err := p.Status(t.Context(), "x")
		if !errors.Is(err, producer.ErrNoStream) || err.Error() != wantResults {
			t.Errorf("got %v, want %q", err, wantResults)
		}
	})
	t.Run("Wait", func(t *testing.T) {
		t.Parallel()
		_, err := p.Wait(t.Context(), "x")
		if !errors.Is(err, producer.ErrNoStream) || err.Error() != wantResults {
			t.Errorf("got %v, want %q", err, wantResults)
		}
	})
	t.Run("Results", func(t *testing.T) {
		t.Parallel()
		for _, follow := range []bool{false, true} {
			var errs []error
			for res, err := range p.Results(t.Context(), follow) {
				if res != nil {
					t.Errorf("got result %+v from no stream", res)
				}
				errs = append(errs, err)
			}
			if len(errs) != 1 || !errors.Is(errs[0], producer.ErrNoStream) {
				t.Errorf("follow=%v: got errors %v, want one ErrNoStream", follow, errs)
			}
		}
	})
}

func TestOptionsValidation(t *testing.T) {
	t.Parallel()
	js := startJetStream(t)
	for _, tc := range []struct {
		name string
		opt  producer.Option
		want string
	}{
		{"empty prefix", producer.WithSubjectPrefix(""), `producer: invalid option: subject prefix "" is not a single NATS token`},
		{"dotted prefix", producer.WithSubjectPrefix("acme.mail"), `producer: invalid option: subject prefix "acme.mail" is not a single NATS token`},
		{"wildcard prefix", producer.WithSubjectPrefix("*"), `producer: invalid option: subject prefix "*" is not a single NATS token`},
		{"prefix with space", producer.WithSubjectPrefix("my mail"), `producer: invalid option: subject prefix "my mail" is not a single NATS token`},
		{"empty stream", producer.WithResultStream(""), `producer: invalid option: result stream name "" is not a valid stream name`},
		{"stream with dot", producer.WithResultStream("A.B"), `producer: invalid option: result stream name "A.B" is not a valid stream name`},
		{"nil Id func", producer.WithIDFunc(nil), `producer: invalid option: Id function is nil`},
		{"Id func bad output", producer.WithIDFunc(func() string { return "a.b" }), `producer: invalid option: Id function returned "a.b", which does not match [A-Za-z0-9_-]{1,128}`},
		{"Id func empty output", producer.WithIDFunc(func() string { return "" }), `producer: invalid option: Id function returned "", which does not match [A-Za-z0-9_-]{1,128}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := producer.New(js, tc.opt)
			if !errors.Is(err, producer.ErrInvalidOption) || p != nil {
				t.Fatalf("got %v, %v; want no Producer and ErrInvalidOption", p, err)
			}
			if err.Error() != tc.want {
				t.Errorf("got message %q, want %q", err, tc.want)
			}
		})
	}
	if _, err := producer.New(nil); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestPublishOptionValidation(t *testing.T) {
	t.Parallel()
	n := 0
	// Valid when New checks it, invalid afterwards.
	idFunc := func() string {
		n++
		if n > 1 {
			return fmt.Sprintf("bad id %d", n)
		}
		return "ok"
	}
	b := setup(t, schema.DefaultNames(), producer.WithIDFunc(idFunc))

	for _, tokens := range [][]string{{""}, {"acme", "a.b"}, {">"}} {
		_, _, err := b.p.Publish(t.Context(), validRequest(), producer.WithSubjectTokens(tokens...))
		if !errors.Is(err, producer.ErrInvalidOption) {
			t.Errorf("tokens %q: got %v, want ErrInvalidOption", tokens, err)
		}
	}
	_, _, err := b.p.Publish(t.Context(), validRequest())
	if !errors.Is(err, producer.ErrInvalidOption) {
		t.Errorf("got %v for an invalid generated Id, want ErrInvalidOption", err)
	}
	_, _, err = b.p.PublishJSON(t.Context(), []byte(`{"To":"a@example.com"}`))
	if !errors.Is(err, producer.ErrInvalidOption) {
		t.Errorf("got %v for an invalid generated Id, want ErrInvalidOption", err)
	}
	if n := streamMsgs(t, b.requests); n != 0 {
		t.Errorf("stream holds %d messages, want none", n)
	}
}

func TestSubjectPrefixAndResultStream(t *testing.T) {
	t.Parallel()
	names := schema.DefaultNames().WithPrefix("acmemail")
	names.RequestStream, names.ResultStream = "ACME_REQUESTS", "ACME_RESULTS"
	b := setup(t, names, producer.WithSubjectPrefix("acmemail"), producer.WithResultStream("ACME_RESULTS"))

	id, ack, err := b.p.Publish(t.Context(), validRequest())
	if err != nil {
		t.Fatal(err)
	}
	if m := storedMsg(t, b.requests, ack); m.Subject != "acmemail.send" {
		t.Errorf("stored on %q, want acmemail.send", m.Subject)
	}
	want := result(id, schema.StateSent, schema.Status200, 1)
	if err := publishResult(t.Context(), b.js, names, want); err != nil {
		t.Fatal(err)
	}
	got, err := b.p.Status(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

func TestPublishAsync(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	const n = 1000
	futures := make(map[string]jetstream.PubAckFuture, n)
	for i := range n {
		req := validRequest()
		var (
			id  string
			f   jetstream.PubAckFuture
			err error
		)
		if i%2 == 0 {
			id, f, err = b.p.PublishAsync(req, producer.WithSubjectTokens(fmt.Sprint("tenant", i%7)))
		} else {
			id, f, err = b.p.PublishJSONAsync([]byte(`{"To":"a@example.com"}`))
		}
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if _, dup := futures[id]; dup {
			t.Fatalf("Id %q generated twice", id)
		}
		futures[id] = f
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
		t.Fatalf("%d publishes still pending", b.js.PublishAsyncPending())
	}
	seqs := make(map[uint64]bool, n)
	for id, f := range futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				t.Errorf("%s: ack is a duplicate", id)
			}
			seqs[ack.Sequence] = true
		case err := <-f.Err():
			t.Errorf("%s: %v", id, err)
		}
		if got := f.Msg().Header.Get(nats.MsgIdHdr); got != id {
			t.Errorf("published with Nats-Msg-Id %q, want %q", got, id)
		}
	}
	if len(seqs) != n {
		t.Errorf("got %d distinct sequences, want %d", len(seqs), n)
	}
	if got := streamMsgs(t, b.requests); got != n {
		t.Errorf("stream holds %d messages, want %d", got, n)
	}
}

func TestPublishConcurrently(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	const n = 50
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := range n {
		wg.Go(func() {
			id, _, err := b.p.Publish(t.Context(), validRequest())
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	if len(seen) != n {
		t.Errorf("got %d distinct Ids, want %d", len(seen), n)
	}
	if got := streamMsgs(t, b.requests); got != n {
		t.Errorf("stream holds %d messages, want %d", got, n)
	}
}

func TestPublishOverMaxPayload(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())

	req := validRequest()
	req.Id = "big"
	req.Body = strings.Repeat("x", int(b.js.Conn().MaxPayload())+1)
	id, ack, err := b.p.Publish(t.Context(), req)
	if !errors.Is(err, nats.ErrMaxPayload) || ack != nil {
		t.Fatalf("got %+v, %v; want nats.ErrMaxPayload", ack, err)
	}
	if id != "big" || !strings.Contains(err.Error(), "publish big on mail.send") {
		t.Errorf("got Id %q and error %q, want both to name the Id", id, err)
	}
}

// TestPublishLanes: the lane comes from WithPriority, else the request's
// Priority, else WithDefaultPriority, else normal; tokens follow it.
func TestPublishLanes(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())
	sub, err := b.js.Conn().SubscribeSync("mail.>")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		priority schema.Lane
		opts     []producer.PublishOption
		want     string
	}{
		{"none", "", nil, "mail.send"},
		{"request's Priority", schema.LaneUrgent, nil, "mail.urgent"},
		{"WithPriority wins", schema.LaneUrgent, []producer.PublishOption{producer.WithPriority(schema.LaneBulk)}, "mail.bulk"},
		{"default when none", "", []producer.PublishOption{producer.WithDefaultPriority(schema.LaneBulk)}, "mail.bulk"},
		{"the request's beats the default", schema.LaneNormal, []producer.PublishOption{producer.WithDefaultPriority(schema.LaneBulk)}, "mail.send"},
		{"with tokens", schema.LaneBulk, []producer.PublishOption{producer.WithSubjectTokens("acme")}, "mail.bulk.acme"},
	} {
		req := &schema.Request{To: schema.AddressList{"a@example.com"}, Priority: tc.priority}
		if _, _, err := b.p.Publish(t.Context(), req, tc.opts...); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil || m.Subject != tc.want {
			t.Errorf("%s: published on %v (%v), want %s", tc.name, m, err, tc.want)
		}
	}
	if _, _, err := b.p.Publish(t.Context(), &schema.Request{To: schema.AddressList{"a@example.com"}}, producer.WithPriority("fast")); !errors.Is(err, producer.ErrInvalidOption) {
		t.Errorf("an unknown priority: %v, want ErrInvalidOption", err)
	}
}

// TestPublishJSONWithBatch adds a BatchId to a payload that has none,
// keeping the rest byte for byte, and leaves one that has its own.
func TestPublishJSONWithBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames())
	sub, err := b.js.Conn().SubscribeSync("mail.bulk")
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		`{"To":"a@example.com"}`:                     `{"BatchId":"news-1","To":"a@example.com"}`,
		`{"To":"a@example.com","batchid":"own-one"}`: `{"To":"a@example.com","batchid":"own-one"}`,
	} {
		if _, _, err := b.p.PublishJSON(t.Context(), []byte(in), producer.WithBatch("news-1"), producer.WithPriority(schema.LaneBulk)); err != nil {
			t.Fatal(err)
		}
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil || string(m.Data) != want {
			t.Errorf("published %s (%v), want %s", m.Data, err, want)
		}
	}
}
