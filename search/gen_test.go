package search

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// The shape of the generated load: 10,000 recipients, 1,000 batches,
// subjects from a few templates with 10,000 order numbers, and about five
// events per message (accepted, 0 to 6 deferred, then sent, failed or
// cancelled), as a busy deployment's week of results.
const (
	genRecipients = 10000
	genBatches    = 1000
	genOrders     = 10000
)

var genSubjects = []string{
	"Your order #%05d has shipped",
	"Invoice %05d/2026",
	"Zażółć gęślą jaźń — zamówienie %05d",
	"Reset your password (request %05d)",
	"Weekly newsletter no. %05d",
	"Your receipt for order %05d",
	"Welcome aboard, customer %05d",
	"Delivery delayed: parcel %05d",
}

// genMsg is one generated message.
type genMsg struct {
	id      string
	rcpts   []string // as in the envelope, in mixed case
	subject string
	lane    schema.Lane
	batch   string
	states  []schema.State // of its events, in order
	t0      time.Time
}

// genRecipient is recipient r of the generated load, in mixed case for
// some.
func genRecipient(r int) string {
	a := fmt.Sprintf("user%05d@example%d.com", r, r%7)
	if r%5 == 0 {
		a = strings.ToUpper(a[:1]) + a[1:]
	}
	return a
}

// genMessage makes message i of the load, the same for every seed.
func genMessage(seed uint64, i int, start time.Time) genMsg {
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	m := genMsg{id: fmt.Sprintf("msg%07d-%d", i, seed%1000), t0: start.Add(time.Duration(i) * 50 * time.Millisecond)}
	n := 1
	switch p := rng.IntN(10); {
	case p >= 9:
		n = 3
	case p >= 7:
		n = 2
	}
	if rng.IntN(10) == 0 {
		n++ // a Bcc
	}
	for len(m.rcpts) < n {
		a := genRecipient(rng.IntN(genRecipients))
		if !slices.Contains(m.rcpts, a) {
			m.rcpts = append(m.rcpts, a)
		}
	}
	m.subject = fmt.Sprintf(genSubjects[rng.IntN(len(genSubjects))], rng.IntN(genOrders))
	switch p := rng.IntN(10); {
	case p == 0:
		m.lane = schema.LaneUrgent
	case p <= 6:
		m.lane = schema.LaneNormal
	default:
		m.lane = schema.LaneBulk
	}
	if m.lane == schema.LaneBulk || rng.IntN(5) == 0 {
		m.batch = fmt.Sprintf("batch-%04d", rng.IntN(genBatches))
	}
	m.states = append(m.states, schema.StateAccepted)
	for range rng.IntN(7) {
		m.states = append(m.states, schema.StateDeferred)
	}
	switch p := rng.IntN(20); {
	case p < 17:
		m.states = append(m.states, schema.StateSent)
	case p < 19:
		m.states = append(m.states, schema.StateFailed)
	default:
		m.states = append(m.states, schema.StateCancelled)
	}
	return m
}

// event is event j of m.
func (m genMsg) event(j int) schema.Result {
	st := m.states[j]
	r := schema.Result{
		Id: m.id, State: st, Attempt: max(1, j), Lane: m.lane, BatchId: m.batch,
		MessageId: "<" + m.id + "@jetmail.example>",
		Metadata:  map[string]string{"tenant": "acme", "campaign": m.batch},
		Time:      m.t0.Add(time.Duration(j) * 90 * time.Second),
	}
	switch st {
	case schema.StateAccepted:
		r.Status = schema.Status202
		r.Envelope = &schema.Envelope{From: "noreply@shop.example", Recipients: m.rcpts, Subject: m.subject}
	case schema.StateDeferred:
		r.Status = schema.Status202
		next := r.Time.Add(90 * time.Second)
		r.NextAttemptAt = &next
		r.Smtp = &schema.SMTPReply{Code: 451, EnhancedCode: "4.3.0", Message: "Mailbox temporarily unavailable"}
		r.Error = "451 4.3.0 Mailbox temporarily unavailable"
	case schema.StateSent:
		r.Status = schema.Status200
		r.Smtp = &schema.SMTPReply{Code: 250, EnhancedCode: "2.0.0", Message: "OK queued as 4F2K1"}
	case schema.StateFailed:
		r.Status = schema.Status500
		r.Smtp = &schema.SMTPReply{Code: 550, EnhancedCode: "5.7.1", Message: "Message rejected"}
		r.Error = "550 5.7.1 Message rejected"
	case schema.StateCancelled:
		r.Status = schema.Status410
	}
	return r
}

// genLoad is a generated load: its messages, and the order of their
// events in the stream (by time).
type genLoad struct {
	msgs  []genMsg
	order []genRef
}

// genRef is event ev of message msg.
type genRef struct {
	at       int64
	msg, evt int32
}

// generate makes messages until they have at least events events.
func generate(seed uint64, events int, start time.Time) *genLoad {
	l := &genLoad{}
	for i := 0; len(l.order) < events; i++ {
		m := genMessage(seed, i, start)
		for j := range m.states {
			if len(l.order) == events {
				m.states = m.states[:j] // the rest is yet to come
				break
			}
			l.order = append(l.order, genRef{at: m.event(j).Time.UnixNano(), msg: int32(i), evt: int32(j)})
		}
		l.msgs = append(l.msgs, m)
	}
	slices.SortStableFunc(l.order, func(a, b genRef) int { return cmp.Compare(a.at, b.at) })
	return l
}

// final is the state of m's latest event.
func (m genMsg) final() schema.State { return m.states[len(m.states)-1] }

// load publishes the events of l[from:to] asynchronously into the result
// stream, and returns the sequence of the last.
func (l *genLoad) publish(tb testing.TB, js jetstream.JetStream, names schema.Names, from, to int) uint64 {
	tb.Helper()
	const window = 2000
	var last jetstream.PubAckFuture
	for i := from; i < to; i++ {
		ref := l.order[i]
		m := l.msgs[ref.msg]
		data, err := json.Marshal(m.event(int(ref.evt)))
		if err != nil {
			tb.Fatal(err)
		}
		if last, err = js.PublishAsync(names.ResultSubject(m.id), data); err != nil {
			tb.Fatalf("publish event %d: %v", i, err)
		}
		if (i-from+1)%window == 0 {
			waitAcks(tb, js)
		}
	}
	waitAcks(tb, js)
	select {
	case ack := <-last.Ok():
		return ack.Sequence
	case err := <-last.Err():
		tb.Fatalf("publish: %v", err)
	}
	return 0
}

func waitAcks(tb testing.TB, js jetstream.JetStream) {
	tb.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		tb.Fatalf("%d publishes not acknowledged after 60 s", js.PublishAsyncPending())
	}
}

// waitIndexed waits until idx has seq, for up to d.
func waitIndexed(tb testing.TB, idx *Index, seq uint64, d time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := idx.WaitSeq(ctx, seq); err != nil {
		tb.Fatal(err)
	}
}
