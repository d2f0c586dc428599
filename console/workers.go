package console

import (
	"cmp"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetmail/jetmail/schema"
)

// workerList holds the latest heartbeat of every worker heard from, by the
// heartbeat's Id. Its subscription delivers on a goroutine of the NATS
// client; close ends it.
type workerList struct {
	mu   sync.Mutex
	seen map[string]heard
	sub  *nats.Subscription
	now  func() time.Time
}

// heard is a heartbeat and when it arrived here (by this clock, so that
// skewed clocks of workers do not matter).
type heard struct {
	schema.Heartbeat
	at time.Time
}

// minFresh is how long a worker stays listed after its last heartbeat, at
// least; three of its intervals when they are longer.
const minFresh = 15 * time.Second

func watchWorkers(nc *nats.Conn, subject string, now func() time.Time) (*workerList, error) {
	l := &workerList{seen: map[string]heard{}, now: now}
	if nc == nil {
		return l, nil
	}
	sub, err := nc.Subscribe(subject, l.receive)
	if err != nil {
		return nil, err
	}
	l.sub = sub
	return l, nil
}

// receive records one heartbeat; a stopping worker leaves the list.
func (l *workerList) receive(m *nats.Msg) {
	var hb schema.Heartbeat
	if json.Unmarshal(m.Data, &hb) != nil || hb.Id == "" {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if hb.Stopping {
		delete(l.seen, hb.Id)
		return
	}
	l.seen[hb.Id] = heard{Heartbeat: hb, at: l.now()}
}

// workerView is one worker as the overview shows it.
type workerView struct {
	schema.Heartbeat
	// Seen is when its last heartbeat arrived.
	Seen time.Time
	// SMTP is its open SMTP connections, over all connections.
	SMTP int
}

// list returns the workers heard from recently, by host and start time,
// and forgets the others.
func (l *workerList) list() []workerView {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var out []workerView
	for id, h := range l.seen {
		fresh := max(minFresh, 3*time.Duration(h.Interval*float64(time.Second)))
		if now.Sub(h.at) > fresh {
			delete(l.seen, id)
			continue
		}
		v := workerView{Heartbeat: h.Heartbeat, Seen: h.at}
		for _, n := range h.SMTPConnections {
			v.SMTP += n
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b workerView) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), a.Started.Compare(b.Started), cmp.Compare(a.Id, b.Id))
	})
	return out
}

// close ends the subscription.
func (l *workerList) close() error {
	if l.sub == nil {
		return nil
	}
	err := l.sub.Unsubscribe()
	if err == nats.ErrBadSubscription || err == nats.ErrConnectionClosed {
		err = nil
	}
	return err
}
