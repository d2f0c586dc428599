package producer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/tracing"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A Producer publishes send requests to jetmail and reads their results.
// Create one with New and share it: a Producer is safe for concurrent use
// by multiple goroutines and holds no state besides its settings, so it
// needs no closing. Closing the NATS connection is up to the caller.
type Producer struct {
	js     jetstream.JetStream
	names  schema.Names
	idFunc func() string
	limits schema.Limits
}

// New returns a Producer that publishes through js. With no options it
// uses the names of the contract: requests on mail.send, results in stream
// JETMAIL_RESULTS on mail.result.<Id>, and Ids from nuid.Next.
//
// New does not talk to the server; a missing stream is reported by the
// first call that needs it, with an error wrapping ErrNoStream. An invalid
// option makes New fail with an error wrapping ErrInvalidOption.
func New(js jetstream.JetStream, opts ...Option) (*Producer, error) {
	if js == nil {
		return nil, errors.New("producer: New needs a JetStream, got nil")
	}
	o := defaultOptions()
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if id := o.idFunc(); !schema.ValidID(id) {
		return nil, fmt.Errorf("%w: Id function returned %q, which does not match [A-Za-z0-9_-]{1,128}", ErrInvalidOption, id)
	}
	names := schema.DefaultNames().WithPrefix(o.prefix)
	names.ResultStream, names.DeadStream = o.resultStream, o.deadStream
	return &Producer{js: js, names: names, idFunc: o.idFunc, limits: o.limits}, nil
}

// Publish validates req, gives it an Id when it has none, publishes it as
// JSON on mail.send (or mail.send.<tokens> with WithSubjectTokens) with the
// Nats-Msg-Id header set to the Id, and waits until JetStream has stored it.
// It returns the Id and the stream's acknowledgement. When the publish
// itself fails (a timeout, say), the Id is returned with the error, and
// publishing req again is safe: it carries the same Id.
//
// Publish sets req.Id when it is empty, so req must not be used by other
// goroutines during the call. The Id is the idempotency key: publishing a
// request with the same Id again within the stream's duplicate window (1h
// by default) stores nothing and returns an ack whose Duplicate field is
// true; workers also skip an Id already sent after that window.
//
// A request that breaks the contract is not published, and the error is the
// *schema.ValidationError itself, listing every broken rule. When no stream
// stores the subject the error wraps ErrNoStream; nats.go retries such a
// publish twice, 250 ms apart, before giving up, in case a stream leader is
// being elected. A payload over the server's max_payload (1 MiB by default)
// fails with an error wrapping nats.ErrMaxPayload. When ctx has no deadline,
// the JetStream context's default timeout (5 s in nats.go) applies.
func (p *Producer) Publish(ctx context.Context, req *schema.Request, opts ...PublishOption) (string, *jetstream.PubAck, error) {
	msg, id, err := p.requestMsg(req, opts)
	return p.publish(ctx, msg, id, err)
}

// PublishJSON publishes a request payload as it is, without re-encoding it:
// a payload written for the SMTP connector's Send Email action works
// unchanged. The payload is decoded and validated first, and one that
// breaks the contract is not published; the error is then the
// *schema.ValidationError itself.
//
// The Id is the payload's Id key (matched without regard to case). When the
// payload has none, PublishJSON generates one and sends it only in the
// Nats-Msg-Id header, which workers then take as the Id (contract §2).
// Otherwise PublishJSON behaves as Publish.
func (p *Producer) PublishJSON(ctx context.Context, data []byte, opts ...PublishOption) (string, *jetstream.PubAck, error) {
	msg, id, err := p.payloadMsg(data, opts)
	return p.publish(ctx, msg, id, err)
}

// PublishAsync is Publish without waiting for the acknowledgement, for
// batch jobs. It returns the Id and the future of the ack; errors that
// PublishAsync itself returns (an invalid request or option, a closed
// connection) mean nothing was published.
//
// The window of unacknowledged publishes belongs to the JetStream context:
// it is 4000 by default and set with jetstream.WithPublishAsyncMaxPending in
// jetstream.New. When it is full, PublishAsync waits up to 200 ms for a
// free slot and then fails with jetstream.ErrTooManyStalledMsgs, so a batch
// larger than the window should wait for acks as it goes. An ack never
// arrives if the server loses the message, and nats.go applies no timeout
// unless the JetStream context was made with
// jetstream.WithPublishAsyncTimeout. After the last publish, wait on
// js.PublishAsyncComplete(), then read each future: its Err channel gets
// jetstream.ErrNoStreamResponse (not ErrNoStream) when no stream stored the
// request.
func (p *Producer) PublishAsync(req *schema.Request, opts ...PublishOption) (string, jetstream.PubAckFuture, error) {
	msg, id, err := p.requestMsg(req, opts)
	return p.publishAsync(msg, id, err)
}

// PublishJSONAsync is PublishJSON without waiting for the acknowledgement.
// See PublishAsync for the window of pending acks and how to wait for them.
func (p *Producer) PublishJSONAsync(data []byte, opts ...PublishOption) (string, jetstream.PubAckFuture, error) {
	msg, id, err := p.payloadMsg(data, opts)
	return p.publishAsync(msg, id, err)
}

// publish stores msg with Nats-Msg-Id id and waits for the ack; prepErr is
// the error of building msg, which publishes nothing.
func (p *Producer) publish(ctx context.Context, msg *nats.Msg, id string, prepErr error) (string, *jetstream.PubAck, error) {
	if prepErr != nil {
		return "", nil, prepErr
	}
	tracing.Inject(ctx, msg.Header)
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	if err != nil {
		return id, nil, p.publishError(msg.Subject, id, err)
	}
	return id, ack, nil
}

// publishAsync is publish without waiting for the ack.
func (p *Producer) publishAsync(msg *nats.Msg, id string, prepErr error) (string, jetstream.PubAckFuture, error) {
	if prepErr != nil {
		return "", nil, prepErr
	}
	f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(id))
	if err != nil {
		return id, nil, p.publishError(msg.Subject, id, err)
	}
	return id, f, nil
}

// requestMsg validates req, sets its Id when empty and encodes it.
func (p *Producer) requestMsg(req *schema.Request, opts []PublishOption) (*nats.Msg, string, error) {
	if req == nil {
		return nil, "", errors.New("producer: publish of a nil request")
	}
	if err := req.ValidateLimits(p.limits); err != nil {
		return nil, "", err
	}
	subject, o, err := p.sendSubject(req.Priority, opts)
	if err != nil {
		return nil, "", err
	}
	if o.batch != "" && req.BatchId == "" {
		req.BatchId = o.batch
	}
	if req.Id == "" {
		id, err := p.newID(o)
		if err != nil {
			return nil, "", err
		}
		req.Id = id
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, "", fmt.Errorf("producer: encoding request %s: %w", req.Id, err)
	}
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	tracing.Inject(o.ctx, m.Header)
	return m, req.Id, nil
}

// payloadMsg validates a raw payload and finds or makes its Id.
func (p *Producer) payloadMsg(data []byte, opts []PublishOption) (*nats.Msg, string, error) {
	req, err := schema.Decode(data)
	if err != nil {
		return nil, "", err
	}
	if err := req.ValidateLimits(p.limits); err != nil {
		return nil, "", err
	}
	subject, o, err := p.sendSubject(req.Priority, opts)
	if err != nil {
		return nil, "", err
	}
	id := req.Id
	if id == "" {
		if id, err = p.newID(o); err != nil {
			return nil, "", err
		}
	}
	if o.batch != "" && req.BatchId == "" {
		if data, err = withKey(data, "BatchId", o.batch); err != nil {
			return nil, "", err
		}
	}
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	tracing.Inject(o.ctx, m.Header)
	return m, id, nil
}

// sendSubject applies opts and returns the subject of the request's lane
// (WithPriority's, else the request's Priority, else WithDefaultPriority's,
// else normal) with their tokens appended.
func (p *Producer) sendSubject(priority schema.Lane, opts []PublishOption) (string, publishOptions, error) {
	var o publishOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	for _, t := range o.tokens {
		if !schema.ValidToken(t) {
			return "", o, fmt.Errorf("%w: subject token %q is not a single NATS token", ErrInvalidOption, t)
		}
	}
	if o.id != "" && !schema.ValidID(o.id) {
		return "", o, fmt.Errorf("%w: Id %q does not match [A-Za-z0-9_-]{1,128}", ErrInvalidOption, o.id)
	}
	for _, l := range []schema.Lane{o.lane, o.defaultLane} {
		if l != "" && !l.Valid() {
			return "", o, fmt.Errorf("%w: priority %q is not urgent, normal or bulk", ErrInvalidOption, l)
		}
	}
	if o.batch != "" && !schema.ValidID(o.batch) {
		return "", o, fmt.Errorf("%w: batch Id %q does not match [A-Za-z0-9_-]{1,128}", ErrInvalidOption, o.batch)
	}
	lane := cmp.Or(o.lane, priority, o.defaultLane, schema.LaneNormal)
	subject := p.names.LaneSubject(lane)
	if len(o.tokens) > 0 {
		subject += "." + strings.Join(o.tokens, ".")
	}
	return subject, o, nil
}

// newID is the Id of a request that has none: WithID's, else a generated
// one.
func (p *Producer) newID(o publishOptions) (string, error) {
	if o.id != "" {
		return o.id, nil
	}
	id := p.idFunc()
	if !schema.ValidID(id) {
		return "", fmt.Errorf("%w: Id function returned %q, which does not match [A-Za-z0-9_-]{1,128}", ErrInvalidOption, id)
	}
	return id, nil
}

// publishError adds the subject and Id to a publish error, and turns "no
// stream answered" into ErrNoStream.
func (p *Producer) publishError(subject, id string, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return &noStreamError{what: "for " + subject, cause: err}
	}
	return fmt.Errorf("producer: publish %s on %s: %w", id, subject, err)
}
