package schema

import (
	"encoding/json"
	"slices"
	"strings"
)

// Names are the subjects and streams of one jetmail deployment. The zero
// value is not useful; start from DefaultNames.
type Names struct {
	// Prefix is the first token of every subject. Default "mail".
	Prefix string
	// RequestStream holds the requests (work-queue retention).
	// Default "JETMAIL_REQUESTS".
	RequestStream string
	// ResultStream holds the result events (limits retention).
	// Default "JETMAIL_RESULTS".
	ResultStream string
	// DeadStream holds the dead letters. Default "JETMAIL_DEAD".
	DeadStream string
	// Consumer is the durable pull consumer of the normal lane, shared by
	// all workers; the urgent and bulk lanes have their own, named after it
	// (LaneConsumer). Default "jetmail-worker".
	Consumer string
	// CancelBucket is the key-value bucket of cancelled Ids and batches
	// (contract §8). Default "JETMAIL_CANCELLED".
	CancelBucket string
	// Suppressions is the KV bucket of the suppression list (contract §9).
	// Default "JETMAIL_SUPPRESSIONS".
	Suppressions string
}

// DefaultNames returns the names of the contract (§1).
func DefaultNames() Names {
	return Names{
		Prefix:        "mail",
		RequestStream: "JETMAIL_REQUESTS",
		ResultStream:  "JETMAIL_RESULTS",
		DeadStream:    "JETMAIL_DEAD",
		Consumer:      "jetmail-worker",
		CancelBucket:  "JETMAIL_CANCELLED",
		Suppressions:  "JETMAIL_SUPPRESSIONS",
	}
}

// WithPrefix returns n with its subject prefix set to p (when p is not
// empty).
func (n Names) WithPrefix(p string) Names {
	if p != "" {
		n.Prefix = p
	}
	return n
}

// WithDefaults returns n with each empty name replaced by DefaultNames'.
func (n Names) WithDefaults() Names {
	d := DefaultNames()
	for _, f := range []struct {
		v   *string
		def string
	}{
		{&n.Prefix, d.Prefix}, {&n.RequestStream, d.RequestStream}, {&n.ResultStream, d.ResultStream},
		{&n.DeadStream, d.DeadStream}, {&n.Consumer, d.Consumer}, {&n.CancelBucket, d.CancelBucket},
		{&n.Suppressions, d.Suppressions},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	return n
}

// ValidToken reports whether s can be used as one NATS subject token.
func ValidToken(s string) bool { return s != "" && !strings.ContainsAny(s, ". *>\t\r\n") }

// SendSubject is the subject producers publish requests on: "mail.send".
func (n Names) SendSubject() string { return n.Prefix + ".send" }

// SendSubjects are the subjects of the request stream: "mail.send" and
// "mail.send.>" (publishers may append tokens such as a tenant).
func (n Names) SendSubjects() []string { return []string{n.SendSubject(), n.SendSubject() + ".>"} }

// UrgentSubject is the subject of the urgent lane: "mail.urgent".
func (n Names) UrgentSubject() string { return n.Prefix + ".urgent" }

// BulkSubject is the subject of the bulk lane: "mail.bulk".
func (n Names) BulkSubject() string { return n.Prefix + ".bulk" }

// LaneSubject is the subject to publish a request of lane l on:
// UrgentSubject, BulkSubject, or SendSubject for LaneNormal and any other
// value, the empty Lane included.
func (n Names) LaneSubject(l Lane) string {
	switch l {
	case LaneUrgent:
		return n.UrgentSubject()
	case LaneBulk:
		return n.BulkSubject()
	}
	return n.SendSubject()
}

// LaneSubjects are the two subjects of lane l, such as "mail.bulk" and
// "mail.bulk.>"; for LaneNormal and any other value, SendSubjects.
func (n Names) LaneSubjects(l Lane) []string {
	s := n.LaneSubject(l)
	return []string{s, s + ".>"}
}

// RequestSubjects are the subjects of the request stream: those of the
// normal lane (SendSubjects), then of the urgent and of the bulk lane:
// "mail.send", "mail.send.>", "mail.urgent", "mail.urgent.>", "mail.bulk"
// and "mail.bulk.>".
func (n Names) RequestSubjects() []string {
	return slices.Concat(n.SendSubjects(), n.LaneSubjects(LaneUrgent), n.LaneSubjects(LaneBulk))
}

// LaneOf returns the lane of a request that arrived on subject, by the
// token after the prefix: LaneUrgent for "mail.urgent" and "mail.urgent.…",
// LaneBulk for "mail.bulk" and "mail.bulk.…", else LaneNormal.
func (n Names) LaneOf(subject string) Lane {
	rest, ok := strings.CutPrefix(subject, n.Prefix+".")
	if !ok {
		return LaneNormal
	}
	tok, _, _ := strings.Cut(rest, ".")
	switch tok {
	case "urgent":
		return LaneUrgent
	case "bulk":
		return LaneBulk
	}
	return LaneNormal
}

// IsRequestSubject reports whether subject is one of the request
// subjects of a lane (mail.send, mail.urgent, mail.bulk, or one below
// them).
func (n Names) IsRequestSubject(subject string) bool {
	for _, l := range []Lane{LaneUrgent, LaneNormal, LaneBulk} {
		if base := n.LaneSubject(l); subject == base || strings.HasPrefix(subject, base+".") {
			return true
		}
	}
	return false
}

// LaneConsumer is the durable consumer of a lane: Consumer for the normal
// lane (so that v1 deployments keep theirs), Consumer-urgent and
// Consumer-bulk for the others.
func (n Names) LaneConsumer(l Lane) string {
	switch l {
	case LaneUrgent, LaneBulk:
		return n.Consumer + "-" + string(l)
	}
	return n.Consumer
}

// ScheduleSubject is the subject on which the request of one Id waits for
// its SendAt (contract §8): "mail.schedule.<Id>", in the request stream,
// where no consumer reads it; JetStream publishes it onto its lane's
// subject when the time comes.
func (n Names) ScheduleSubject(id string) string { return n.Prefix + ".schedule." + id }

// ScheduleSubjects is the wildcard subject of all waiting schedules.
func (n Names) ScheduleSubjects() string { return n.Prefix + ".schedule.>" }

// ResultSubject is the subject of the result events of one Id.
func (n Names) ResultSubject(id string) string { return n.Prefix + ".result." + id }

// ResultSubjects is the wildcard subject of all result events.
func (n Names) ResultSubjects() string { return n.Prefix + ".result.>" }

// DeadSubject is the subject of the dead letter of one Id.
func (n Names) DeadSubject(id string) string { return n.Prefix + ".dead." + id }

// DeadSubjects is the wildcard subject of all dead letters.
func (n Names) DeadSubjects() string { return n.Prefix + ".dead.>" }

// EventSubject is the subject of one event of a kind other than a result,
// such as "mail.event.unsubscribe.<Id>", stored in the result stream.
func (n Names) EventSubject(kind, id string) string { return n.Prefix + ".event." + kind + "." + id }

// EventSubjects is the wildcard subject of all such events: "mail.event.>".
func (n Names) EventSubjects() string { return n.Prefix + ".event.>" }

// DeadLetter is what a worker publishes on mail.dead.<Id> when a request
// fails for good: the original payload and its final result, so that it can
// be replayed.
type DeadLetter struct {
	// Request is the request payload exactly as it was published.
	Request json.RawMessage `json:"Request"`
	// Subject is the subject the request was published on.
	Subject string `json:"Subject"`
	// Result is the final failed result.
	Result Result `json:"Result"`
}
