package schema

import (
	"strconv"
	"time"
)

// State is the stage a message has reached, as carried in Result.State.
type State string

// The states of a message. Scheduled, Accepted and Deferred are interim;
// Sent, Failed and Cancelled are final, and a message has exactly one final
// event.
const (
	StateAccepted State = "accepted"
	StateDeferred State = "deferred"
	StateSent     State = "sent"
	StateFailed   State = "failed"
	// StateScheduled is a valid request with a future SendAt, waiting for
	// it (Status 202).
	StateScheduled State = "scheduled"
	// StateCancelled is a message cancelled before it was sent (Status
	// 410).
	StateCancelled State = "cancelled"
)

// Final reports whether s is a final state (sent, failed or cancelled).
func (s State) Final() bool { return s == StateSent || s == StateFailed || s == StateCancelled }

// Status is the HTTP-style code of a result event. The set is closed: the
// constants other than Status413 are every value a worker publishes.
type Status int

// The result status codes of the contract (§3).
const (
	// Status200 means the SMTP server accepted the message for at least one
	// recipient.
	Status200 Status = 200
	// Status202 means accepted by a worker, deferred for a retry, or
	// scheduled for its SendAt.
	Status202 Status = 202
	// Status400 means the request is invalid; it was never sent.
	Status400 Status = 400
	// Status401 means SMTP authentication was rejected until retries ran out.
	Status401 Status = 401
	// Status403 means the sender is not allowed, an SMTP policy rejection
	// (5.7.x, relay denied), or every recipient is suppressed.
	Status403 Status = 403
	// Status404 means every recipient was rejected as unknown.
	Status404 Status = 404
	// Status410 means the message was cancelled before it was sent.
	Status410 Status = 410
	// Status413 is not a result status: the HTTP API answers it for a
	// request over a size limit, whose result event has Status 400.
	Status413 Status = 413
	// Status500 means any other permanent SMTP rejection, or retries
	// exhausted on transient failures.
	Status500 Status = 500
)

// String returns the code in decimal, such as "404".
func (s Status) String() string { return strconv.Itoa(int(s)) }

// SMTPReply is an SMTP server reply: the basic code, the enhanced status
// code when the server sent one (RFC 3463), and the text.
type SMTPReply struct {
	// Code is the three-digit reply code, such as 250 or 451.
	Code int `json:"Code"`
	// EnhancedCode is the RFC 3463 status code, such as "4.3.0", when the
	// server sent one.
	EnhancedCode string `json:"EnhancedCode,omitempty"`
	// Message is the text of the reply.
	Message string `json:"Message,omitempty"`
}

// RecipientResult is the outcome for one recipient, listed in a result when
// recipients fared differently.
type RecipientResult struct {
	// Address is the recipient's email address.
	Address string `json:"Address"`
	// Status is the outcome for this recipient, on the scale of
	// Result.Status: 200 when the server took it, 202 while it waits for a
	// retry (in deferred events), else a failure status such as 404 for an
	// unknown recipient or 403 for a suppressed one.
	Status Status `json:"Status"`
	// Code is the SMTP reply code for this recipient.
	Code int `json:"Code,omitempty"`
	// Message is the text of that SMTP reply.
	Message string `json:"Message,omitempty"`
	// Suppressed says that the recipient was skipped, without an SMTP
	// transaction, because it is on the suppression list; Status is then
	// 403 and Reason says why it is listed.
	Suppressed bool `json:"Suppressed,omitempty"`
	// Reason is the suppression list's reason for a Suppressed recipient:
	// bounce, unsubscribe or manual. Empty for the others.
	Reason string `json:"Reason,omitempty"`
}

// Envelope is what a message is sent from and to, and its subject, carried
// in the accepted and scheduled events so that messages can be found by
// recipient and subject.
type Envelope struct {
	// From is the sender's bare address (without display name), after the
	// connection's default sender has been applied.
	From string `json:"From"`
	// Recipients are the bare addresses of every To, CC and Bcc recipient,
	// Bcc included, in that order.
	Recipients []string `json:"Recipients"`
	// Subject is the message's subject as sent; it may be empty.
	Subject string `json:"Subject"`
}

// Result is one state change of a message, published on mail.result.<Id>.
// The latest Result of an Id is the message's status.
type Result struct {
	// Id is the request's Id.
	Id string `json:"Id"`
	// Status is the HTTP-style code (see the Status constants).
	Status Status `json:"Status"`
	// State is scheduled, accepted, deferred, sent, failed or cancelled.
	State State `json:"State"`
	// Attempt is the JetStream delivery count of the request, counted
	// across all workers, from 1: the attempt the event is about. An
	// accepted event has 1; an invalid request's 400 has the delivery that
	// found it invalid.
	Attempt int `json:"Attempt"`
	// MessageId is the RFC 5322 Message-ID of the built message, stable
	// across retries.
	MessageId string `json:"MessageId,omitempty"`
	// Smtp is the last SMTP reply, when there was one.
	Smtp *SMTPReply `json:"Smtp,omitempty"`
	// Recipients lists per-recipient outcomes when they differ.
	Recipients []RecipientResult `json:"Recipients,omitempty"`
	// NextAttemptAt is when a deferred message will be tried again.
	NextAttemptAt *time.Time `json:"NextAttemptAt,omitempty"`
	// Error is a human-readable reason for deferred and failed results.
	Error string `json:"Error,omitempty"`
	// Fields lists the broken rules of an invalid request (Status 400).
	Fields []FieldError `json:"Fields,omitempty"`
	// Metadata is the request's Metadata, unchanged.
	Metadata map[string]string `json:"Metadata,omitempty"`
	// Lane is the lane the request travels in: urgent, normal or bulk.
	// Empty only in events of workers before v2.
	Lane Lane `json:"Lane,omitempty"`
	// BatchId is the request's BatchId.
	BatchId string `json:"BatchId,omitempty"`
	// SendAt is, for a scheduled message, when it will be sent.
	SendAt *time.Time `json:"SendAt,omitempty"`
	// Envelope is the sender, recipients and subject, on accepted and
	// scheduled events only; nil on the others.
	Envelope *Envelope `json:"Envelope,omitempty"`
	// Uncertain is true on the event after an attempt that ended after the
	// final "." of DATA without a reply: the relay may have the message,
	// so a retry may deliver it twice (with the same MessageId).
	Uncertain bool `json:"Uncertain,omitempty"`
	// Time is when the event happened.
	Time time.Time `json:"Time"`
}

// Final reports whether r is a final result (sent, failed or cancelled).
func (r *Result) Final() bool { return r.State.Final() }
