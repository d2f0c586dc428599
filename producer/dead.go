package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/jetmail/jetmail/schema"
)

// DeadLetter is one dead letter as stored in the dead-letter stream: a
// request that failed for good, with its final result.
type DeadLetter struct {
	schema.DeadLetter
	// Seq is its sequence in the dead-letter stream.
	Seq uint64
	// Data is the dead letter's JSON as stored.
	Data []byte
}

// ID is the Id of the dead letter's request.
func (d *DeadLetter) ID() string { return d.Result.Id }

// DeadLetters yields the latest dead letter of every Id, oldest first, as
// they are when iteration begins. A dead letter that does not decode yields
// a nil letter and an error, and iteration goes on; any other error, such
// as one wrapping ErrNoStream when the dead-letter stream does not exist,
// is yielded last.
func (p *Producer) DeadLetters(ctx context.Context) iter.Seq2[*DeadLetter, error] {
	return func(yield func(*DeadLetter, error) bool) {
		cfg := jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{p.names.DeadSubjects()},
			DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		}
		for msg, err := range p.readStream(ctx, p.names.DeadStream, cfg, false, "reading dead letters") {
			if err != nil {
				yield(nil, err)
				return
			}
			md, _ := msg.Metadata()
			d, err := p.decodeDead(msg.Subject(), md.Sequence.Stream, msg.Data())
			if !yield(d, err) {
				return
			}
		}
	}
}

// DeadLetterOf returns the latest dead letter of id. It returns an error
// wrapping ErrNotFound when id has none, and ErrNoStream when the
// dead-letter stream does not exist.
func (p *Producer) DeadLetterOf(ctx context.Context, id string) (*DeadLetter, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	st, err := p.js.Stream(ctx, p.names.DeadStream)
	if err != nil {
		return nil, p.streamError(p.names.DeadStream, "dead letter of "+id, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, p.names.DeadSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: no dead letter for %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, p.streamError(p.names.DeadStream, "dead letter of "+id, err)
	}
	return p.decodeDead(m.Subject, m.Sequence, m.Data)
}

func (p *Producer) decodeDead(subject string, seq uint64, data []byte) (*DeadLetter, error) {
	d := &DeadLetter{Seq: seq, Data: data}
	if err := json.Unmarshal(data, &d.DeadLetter); err != nil {
		return nil, fmt.Errorf("%w dead letter %d on %s: %w", ErrMalformed, seq, subject, err)
	}
	if d.Result.Id == "" {
		d.Result.Id = strings.TrimPrefix(subject, p.names.DeadSubject(""))
	}
	return d, nil
}

// ReplayOutcome says what Replay did.
type ReplayOutcome int

// The outcomes of Replay.
const (
	// Replayed means the request was published again and the dead letter
	// removed.
	Replayed ReplayOutcome = iota + 1
	// AlreadySent means the Id was sent meanwhile (by a later publish): the
	// dead letter was removed and nothing published.
	AlreadySent
)

// Replay publishes the request of d again, unchanged, on the subject it
// was published on, so in its lane (the normal lane's subject when that is
// not a request subject any more), with a Nats-Msg-Id of its own so that the duplicate window
// does not drop it; then it removes d (and only d: a dead letter stored
// since stays). The message keeps its Id, so its events continue on
// mail.result.<Id>. An Id whose latest result is sent is not published
// again. A failure after publishing says so: replaying again is safe, as a
// worker does not send an Id that is already sent.
func (p *Producer) Replay(ctx context.Context, d *DeadLetter) (ReplayOutcome, error) {
	id := d.ID()
	if len(d.Request) == 0 || !json.Valid(d.Request) {
		return 0, errors.New("producer: the dead letter holds no JSON request to replay")
	}
	st, err := p.js.Stream(ctx, p.names.DeadStream)
	if err != nil {
		return 0, p.streamError(p.names.DeadStream, "replay of "+id, err)
	}
	remove := func() error {
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(p.names.DeadSubject(id)), jetstream.WithPurgeSequence(d.Seq+1)); err != nil {
			return fmt.Errorf("removing the dead letter: %w", err)
		}
		return nil
	}
	if last, err := p.Status(ctx, id); err == nil && last.State == schema.StateSent {
		return AlreadySent, remove()
	}
	body, err := withID(d.Request, id)
	if err != nil {
		return 0, err
	}
	subject := d.Subject
	if !p.names.IsRequestSubject(subject) {
		subject = p.names.SendSubject()
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id+".replay."+nuid.Next())
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.js.PublishMsg(pctx, msg); err != nil {
		return 0, p.publishError(subject, id, err)
	}
	if err := remove(); err != nil {
		return 0, fmt.Errorf("producer: %s replayed, but %w; replaying it again will not send it twice", id, err)
	}
	return Replayed, nil
}

// withID returns the request payload raw with its Id key set to id when it
// has none, and raw itself otherwise.
func withID(raw json.RawMessage, id string) ([]byte, error) { return withKey(raw, "Id", id) }

// withKey returns the request payload raw with key (matched in any case)
// set to value when it has no non-empty string there, and raw itself
// otherwise. The rest of the payload is kept byte for byte when the key is
// absent.
func withKey(raw json.RawMessage, key, value string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("producer: the request is not a JSON object: %w", err)
	}
	empty := false
	for k, v := range obj {
		if !strings.EqualFold(k, key) {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil && s != "" {
			return raw, nil // the body has it: keep it as it is
		}
		empty = true
	}
	if empty {
		// "": "" or null: rewrite the object without it.
		for k := range obj {
			if strings.EqualFold(k, key) {
				delete(obj, k)
			}
		}
		obj[key], _ = json.Marshal(value)
		return json.Marshal(obj)
	}
	// Insert the key after the opening brace, keeping the rest byte for
	// byte.
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	k, _ := json.Marshal(key)
	v, _ := json.Marshal(value)
	out := append(append(append([]byte("{"), k...), ':'), v...)
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, trimmed[1:]...), nil
}
