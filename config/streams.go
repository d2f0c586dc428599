package config

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// Streams is the JetStream topology of a jetmail deployment: the request,
// result and dead-letter streams and the durable consumer the workers
// share (contract §1). Workers create it at start-up with Ensure; tests
// create the very same streams through it, so that nothing is tested
// against streams production never has. Zero fields take the defaults of
// DefaultStreams.
type Streams struct {
	// Names are the subjects, streams and consumer.
	Names schema.Names
	// Replicas is the replica count of every stream and the consumer.
	// Default 1; use 3 on a cluster.
	Replicas int
	// DuplicateWindow is the request stream's Nats-Msg-Id window.
	// Default 1h.
	DuplicateWindow time.Duration
	// ResultMaxAge is how long result events are kept. Default 7 days.
	ResultMaxAge time.Duration
	// DeadMaxAge is how long dead letters are kept. Default 30 days.
	DeadMaxAge time.Duration
	// AckWait is how long the consumer waits for an acknowledgement before
	// it redelivers. Default 60s.
	AckWait time.Duration
	// MaxDeliver is the consumer's backstop on deliveries, a few above the
	// worker's MaxAttempts (which the worker enforces itself). Default 15.
	MaxDeliver int
	// MaxAckPending bounds the messages held by workers or waiting for a
	// retry at once, per lane. Default 100000.
	MaxAckPending int
	// CancelTTL is how long a cancellation mark is kept. Default 31 days:
	// longer than the furthest SendAt and a deferred message's MaxAge.
	CancelTTL time.Duration
}

// DefaultStreams returns the topology of the contract's defaults.
func DefaultStreams() Streams {
	return Streams{
		Names:           schema.DefaultNames(),
		Replicas:        1,
		DuplicateWindow: time.Hour,
		ResultMaxAge:    7 * 24 * time.Hour,
		DeadMaxAge:      30 * 24 * time.Hour,
		AckWait:         60 * time.Second,
		MaxDeliver:      15,
		MaxAckPending:   100000,
		CancelTTL:       31 * 24 * time.Hour,
	}
}

// WithDefaults returns s with zero fields (and zero names) replaced by
// DefaultStreams'.
func (s Streams) WithDefaults() Streams {
	d := DefaultStreams()
	s.Names = s.Names.WithDefaults()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	seti(&s.Replicas, d.Replicas)
	set(&s.DuplicateWindow, d.DuplicateWindow)
	set(&s.ResultMaxAge, d.ResultMaxAge)
	set(&s.DeadMaxAge, d.DeadMaxAge)
	set(&s.AckWait, d.AckWait)
	seti(&s.MaxDeliver, d.MaxDeliver)
	seti(&s.MaxAckPending, d.MaxAckPending)
	set(&s.CancelTTL, d.CancelTTL)
	return s
}

// RequestStream is the work-queue stream of send requests: the subjects
// of the three lanes (contract §7), and the schedule subjects where
// requests wait for their SendAt (§8). Message schedules (JetStream 2.12+)
// re-publish a waiting request onto its lane's subject at its time; they
// force roll-ups on, which jetmail does not otherwise use.
func (s Streams) RequestStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	return jetstream.StreamConfig{
		Name:              s.Names.RequestStream,
		Description:       "jetmail send requests, by lane, and the scheduled ones waiting for their time",
		Subjects:          append(s.Names.RequestSubjects(), s.Names.ScheduleSubjects()),
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          s.Replicas,
		Duplicates:        s.DuplicateWindow,
		AllowMsgSchedules: true,
		AllowRollup:       true,
		// Direct gets let a canceller find the waiting requests of a batch:
		// a work-queue stream takes no consumer beside the workers'.
		AllowDirect: true,
	}
}

// ResultStream is the stream of result events; the latest per subject is
// a message's status, read with direct gets. It also holds the other
// events (mail.event.>), such as one-click unsubscribes.
func (s Streams) ResultStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	return jetstream.StreamConfig{
		Name:              s.Names.ResultStream,
		Description:       "jetmail result events; the latest per subject is a message's status",
		Subjects:          []string{s.Names.ResultSubjects(), s.Names.EventSubjects()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          s.Replicas,
		MaxAge:            s.ResultMaxAge,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		MaxMsgsPerSubject: 32,
	}
}

// DeadStream is the stream of dead letters, kept for replay.
func (s Streams) DeadStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	return jetstream.StreamConfig{
		Name:        s.Names.DeadStream,
		Description: "jetmail dead letters: failed requests with their final result, for replay",
		Subjects:    []string{s.Names.DeadSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
		MaxAge:      s.DeadMaxAge,
		AllowDirect: true,
	}
}

// SuppressionMarkerTTL is how long the suppression bucket keeps the
// marker that the server leaves when an entry expires (a bounce) or is
// removed, so that watchers that were away a while still learn of it.
const SuppressionMarkerTTL = time.Hour

// SuppressionBucket is the KV bucket of the suppression list (contract
// §9): one key per address or @domain (see package suppress for the key
// encoding), one revision per key, and per-key TTLs (LimitMarkerTTL) so
// that bounce entries expire on the server.
func (s Streams) SuppressionBucket() jetstream.KeyValueConfig {
	s = s.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:         s.Names.Suppressions,
		Description:    "jetmail suppression list: one key per address or @domain",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       s.Replicas,
		LimitMarkerTTL: SuppressionMarkerTTL,
	}
}

// LaneConsumer is the durable pull consumer of one lane, shared by all
// workers; it reads only the lane's subjects, so that the schedules (and
// the other lanes) are not delivered to it.
func (s Streams) LaneConsumer(l schema.Lane) jetstream.ConsumerConfig {
	s = s.WithDefaults()
	if l == "" {
		l = schema.LaneNormal
	}
	return jetstream.ConsumerConfig{
		Durable:        s.Names.LaneConsumer(l),
		Description:    "jetmail workers, " + string(l) + " lane",
		FilterSubjects: s.Names.LaneSubjects(l),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        s.AckWait,
		MaxDeliver:     s.MaxDeliver,
		// Deferred messages (NakWithDelay) stay pending on the server,
		// so this bounds how many messages may wait for a retry; it is
		// large so that an outage of one relay does not stall the rest.
		MaxAckPending: s.MaxAckPending,
		Replicas:      s.Replicas,
	}
}

// CancelBucket is the key-value bucket of cancellation marks: keys
// "id.<Id>" and "batch.<BatchId>".
func (s Streams) CancelBucket() jetstream.KeyValueConfig {
	s = s.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      s.Names.CancelBucket,
		Description: "jetmail cancelled messages and batches",
		History:     1,
		TTL:         s.CancelTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
	}
}

// Lanes are the lanes, urgent first.
var Lanes = []schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk}

// Topology is what Ensure created: the streams, consumers and bucket a
// worker uses.
type Topology struct {
	// Requests is the request stream.
	Requests jetstream.Stream
	// Results is the result stream, for status look-ups.
	Results jetstream.Stream
	// Consumers are the workers' durable consumers, by lane.
	Consumers map[schema.Lane]jetstream.Consumer
	// Cancelled is the bucket of cancellation marks.
	Cancelled jetstream.KeyValue
}

// Ensure creates or updates the streams, the consumers and the bucket,
// idempotently, so that a worker on an empty server is enough and any
// number of workers can start at once. On a v1 deployment it first narrows
// the old unfiltered consumer to the normal lane, then widens the request
// stream to the other lanes and the schedules, so that nothing a v1 worker
// reads changes meaning.
func (s Streams) Ensure(ctx context.Context, js jetstream.JetStream) (*Topology, error) {
	s = s.WithDefaults()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := Topology{Consumers: map[schema.Lane]jetstream.Consumer{}}
	var err error
	if t.Results, err = js.CreateOrUpdateStream(ctx, s.ResultStream()); err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", s.Names.ResultStream, err)
	}
	if _, err = js.CreateOrUpdateStream(ctx, s.DeadStream()); err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", s.Names.DeadStream, err)
	}
	normal := s.LaneConsumer(schema.LaneNormal)
	if old, err := js.Consumer(ctx, s.Names.RequestStream, normal.Durable); err == nil {
		if c := old.CachedInfo().Config; c.FilterSubject == "" && len(c.FilterSubjects) == 0 {
			if _, err := js.UpdateConsumer(ctx, s.Names.RequestStream, normal); err != nil {
				return nil, fmt.Errorf("narrow consumer %s to the normal lane: %w", normal.Durable, err)
			}
		}
	}
	if t.Requests, err = js.CreateOrUpdateStream(ctx, s.RequestStream()); err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", s.Names.RequestStream, err)
	}
	for _, l := range Lanes {
		cc := s.LaneConsumer(l)
		c, err := js.CreateOrUpdateConsumer(ctx, s.Names.RequestStream, cc)
		if err != nil {
			return nil, fmt.Errorf("ensure consumer %s on %s: %w", cc.Durable, s.Names.RequestStream, err)
		}
		t.Consumers[l] = c
	}
	if t.Cancelled, err = js.CreateOrUpdateKeyValue(ctx, s.CancelBucket()); err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", s.Names.CancelBucket, err)
	}
	return &t, nil
}

// CountScheduled counts the requests waiting for their SendAt: the
// subjects of the request stream under the schedule prefix, one per
// request. It asks the server for the total only (nats.go's stream info
// with a subject filter would page through every subject). The worker's
// jetmail_scheduled and the console's overview both read it.
func CountScheduled(ctx context.Context, js jetstream.JetStream, names schema.Names) (int, error) {
	req, err := json.Marshal(map[string]any{"subjects_filter": names.ScheduleSubjects()})
	if err != nil {
		return 0, err
	}
	m, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.INFO."+names.RequestStream, req)
	if err != nil {
		return 0, fmt.Errorf("stream info of %s: %w", names.RequestStream, err)
	}
	var resp struct {
		Total int `json:"total"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("stream info of %s: %w", names.RequestStream, err)
	}
	if resp.Error != nil {
		return 0, fmt.Errorf("stream info of %s: %s", names.RequestStream, resp.Error.Description)
	}
	return resp.Total, nil
}
