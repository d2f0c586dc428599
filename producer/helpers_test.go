package producer_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nats-server/v2/server"
	natsserver "github.com/nats-io/nats-server/v2/test"
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

// setup starts a JetStream server, creates the streams as a worker would
// (for the prefix of opts' names) and returns a Producer made with opts.
func setup(t *testing.T, names schema.Names, opts ...producer.Option) *testBundle {
	t.Helper()
	js := startJetStream(t)
	requests, results, err := createStreams(t.Context(), js, names)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(js, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{js: js, p: p, requests: requests, results: results, names: names}
}

// startJetStream runs an in-process JetStream server on a port chosen by
// the OS and returns a JetStream context connected to it. Both are cleaned
// up when the test ends.
func startJetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	s := natsserver.RunServer(&opts)
	t.Cleanup(s.Shutdown)
	js, nc, err := connect(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

func connect(s *server.Server) (jetstream.JetStream, *nats.Conn, error) {
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc, nil
}

// createStreams creates the request and result streams with the settings
// that workers give them (contract §1).
func createStreams(ctx context.Context, js jetstream.JetStream, names schema.Names) (requests, results jetstream.Stream, err error) {
	requests, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       names.RequestStream,
		Subjects:   names.SendSubjects(),
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Duplicates: time.Hour,
	})
	if err != nil {
		return nil, nil, err
	}
	results, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      names.ResultStream,
		Subjects:  []string{names.ResultSubjects()},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
		MaxAge:    7 * 24 * time.Hour,
	})
	if err != nil {
		return nil, nil, err
	}
	return requests, results, nil
}

// runJetStream is startJetStream for examples, which have no *testing.T.
// It runs a server, with jetmail's streams when withStreams is set (as
// `jetmail worker` leaves it), and returns its URL and a function that
// shuts it down.
func runJetStream(withStreams bool) (url string, stop func()) {
	dir, err := os.MkdirTemp("", "jetmail-example-")
	if err != nil {
		panic(err)
	}
	opts := natsserver.DefaultTestOptions
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = dir
	s := natsserver.RunServer(&opts)
	stop = func() {
		s.Shutdown()
		os.RemoveAll(dir)
	}
	if withStreams {
		js, nc, err := connect(s)
		if err != nil {
			panic(err)
		}
		defer nc.Close()
		if _, _, err := createStreams(context.Background(), js, schema.DefaultNames()); err != nil {
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
