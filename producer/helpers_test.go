package producer_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// testBundle is what most tests need: a JetStream server with jetmail's
// streams and a Producer on it.
type testBundle struct {
	js       jetstream.JetStream
	p        *producer.Producer
	requests jetstream.Stream
	results  jetstream.Stream
	names    schema.Names
}

// setup starts a JetStream server, creates the streams as a worker does
// (for the prefix of names) and returns a Producer made with opts.
func setup(t *testing.T, names schema.Names, opts ...producer.Option) *testBundle {
	t.Helper()
	js := startJetStream(t)
	top := jstest.EnsureStreams(t, js, names)
	requests, err := js.Stream(t.Context(), names.WithDefaults().RequestStream)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(js, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{js: js, p: p, requests: requests, results: top.Results, names: names}
}

// startJetStream runs an in-process JetStream server and returns a
// JetStream context connected to it.
func startJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, js := jstest.Start(t).Connect(t)
	return js
}

// runJetStream is startJetStream for examples, which have no *testing.T.
// It runs a server, with jetmail's streams when withStreams is set (as
// `jetmail worker` leaves it), and returns its URL and a function that
// shuts it down.
func runJetStream(withStreams bool) (url string, stop func()) {
	dir := jstest.TempDir()
	s := jstest.Run(dir)
	stop = func() {
		s.Shutdown()
		os.RemoveAll(dir)
	}
	if withStreams {
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			panic(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			panic(err)
		}
		if _, err := (config.Streams{}).Ensure(context.Background(), js); err != nil {
			panic(err)
		}
	}
	return s.ClientURL(), stop
}

// actAsWorker publishes the result events a worker would publish for a
// request it sent: accepted, then sent.
func actAsWorker(js jetstream.JetStream, id string) {
	for _, r := range []schema.Result{
		{Id: id, Status: schema.Status202, State: schema.StateAccepted, Attempt: 1, Time: time.Now()},
		{Id: id, Status: schema.Status200, State: schema.StateSent, Attempt: 1, MessageId: "<" + id + "@example.com>",
			Smtp: &schema.SMTPReply{Code: 250, EnhancedCode: "2.0.0", Message: "OK queued"}, Time: time.Now()},
	} {
		if err := publishResult(context.Background(), js, schema.DefaultNames(), r); err != nil {
			panic(err)
		}
	}
}

// publishResult publishes a result event by hand, as a worker would.
func publishResult(ctx context.Context, js jetstream.JetStream, names schema.Names, res schema.Result) error {
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, names.ResultSubject(res.Id), data)
	return err
}

// result is a result event for tests, at a fixed time.
func result(id string, state schema.State, status schema.Status, attempt int) schema.Result {
	return schema.Result{
		Id:       id,
		State:    state,
		Status:   status,
		Attempt:  attempt,
		Metadata: map[string]string{"order": "42"},
		Time:     time.Date(2026, 5, 4, 12, 0, attempt, 0, time.UTC),
	}
}
