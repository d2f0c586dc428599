package producer

import (
	"errors"
	"fmt"
)

// ErrInvalidOption is wrapped by the errors of options that New or a
// publish method rejects: a subject prefix or token that is not a single
// NATS token, an invalid stream name, or an Id function that returns an
// invalid Id. Test for it with errors.Is.
var ErrInvalidOption = errors.New("producer: invalid option")

// ErrNoStream reports that a JetStream stream jetmail needs is missing:
// nothing stored a publish on the send subject (no stream listens on it, or
// JetStream is not enabled), or the result stream does not exist. Usually
// no worker has ever run against this server, since workers create the
// streams at start-up. The errors that wrap it read like
//
//	producer: no JetStream stream for mail.send: is a worker running?
//
// Test for it with errors.Is.
var ErrNoStream = errors.New("producer: no JetStream stream")

// ErrNotFound is wrapped by the error of Status and Events for an Id that
// has no result event: it was never published, no worker has taken it yet,
// or its events have expired from the result stream. Test for it with
// errors.Is.
var ErrNotFound = errors.New("producer: no result")

// ErrMalformed is wrapped by the error yielded for a stored event or dead
// letter that does not decode; iteration goes on after it. Test for it with
// errors.Is.
var ErrMalformed = errors.New("producer: malformed")

// ErrInvalidID is wrapped by the errors of Status and Wait for an Id that
// does not match [A-Za-z0-9_-]{1,128}, and so can have no result. Test for
// it with errors.Is.
var ErrInvalidID = errors.New("producer: invalid Id")

// noStreamError is the error behind ErrNoStream. It names what was missing
// and keeps the JetStream error that told so reachable through Unwrap.
type noStreamError struct {
	what  string // "for mail.send" or "JETMAIL_RESULTS"
	cause error
}

func (e *noStreamError) Error() string {
	return fmt.Sprintf("producer: no JetStream stream %s: is a worker running?", e.what)
}

func (e *noStreamError) Is(target error) bool { return target == ErrNoStream }

func (e *noStreamError) Unwrap() error { return e.cause }
