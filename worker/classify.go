package worker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"syscall"

	"github.com/jetmail/jetmail/schema"
)

// Class says whether a failed delivery may succeed if tried again later.
type Class uint8

// The classes of a DeliveryError.
const (
	// Transient failures are retried with backoff until attempts or age run
	// out.
	Transient Class = iota + 1
	// Permanent failures are never retried.
	Permanent
)

// String returns "transient" or "permanent", as in the
// jetmail_smtp_attempts_total outcome label.
func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	}
	return "unknown"
}

// DeliveryError is a failed delivery after classification. Classify and
// classifyRecipients are the only functions that create one.
type DeliveryError struct {
	// Class says whether a retry may help.
	Class Class
	// Status is what the final result says if this failure ends the
	// message: 401, 403, 404 or 500.
	Status schema.Status
	// Op is where it happened: dial, tls, auth, mail, rcpt, data,
	// data-close, write or file.
	Op string
	// Reply is the SMTP reply, or nil when the server never answered.
	Reply *schema.SMTPReply
	// Recipients holds the per-recipient rejections when Op is rcpt.
	Recipients []schema.RecipientResult
	// Err is the underlying error.
	Err error
}

// Error returns the stage and the cause, such as "rcpt: 550 5.1.1 no such
// user".
func (e *DeliveryError) Error() string { return e.Op + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *DeliveryError) Unwrap() error { return e.Err }

// errShutdown is the cancellation cause of in-flight handlers when the grace
// period of a shutdown has run out.
var errShutdown = errors.New("worker shutting down")

// errTLSRequired is returned when a connection demands TLS and the server
// does not offer STARTTLS. The message is never sent in clear.
var errTLSRequired = errors.New("the server does not offer STARTTLS and the connection requires TLS; not sending in clear")

// opError carries the SMTP stage an error happened in until Classify sees
// it.
type opError struct {
	op  string
	err error
}

func (e *opError) Error() string { return e.op + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// withOp records the stage op on err (nil stays nil).
func withOp(op string, err error) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, err: err}
}

var enhancedRe = regexp.MustCompile(`^([245])\.(\d{1,3})\.(\d{1,3})\b`)

// replyOf extracts the SMTP reply from err, splitting off the enhanced
// status code when the text starts with one (RFC 3463).
func replyOf(err error) *schema.SMTPReply {
	var tp *textproto.Error
	if !errors.As(err, &tp) {
		return nil
	}
	r := &schema.SMTPReply{Code: tp.Code, Message: strings.TrimSpace(tp.Msg)}
	if m := enhancedRe.FindString(r.Message); m != "" {
		r.EnhancedCode = m
		r.Message = strings.TrimSpace(r.Message[len(m):])
	}
	return r
}

// Classify turns a failed delivery into a *DeliveryError: whether to retry,
// and the status if it ends here. It is the one place where jetmail decides
// what an SMTP or network failure means; its test table is the
// documentation. It returns nil for a nil error. A cancellation caused by
// errShutdown is returned unchanged (as a plain error), because it is not a
// failure of the message.
func Classify(err error) *DeliveryError {
	if err == nil {
		return nil
	}
	var de *DeliveryError
	if errors.As(err, &de) {
		return de
	}
	op := "send"
	var oe *opError
	if errors.As(err, &oe) {
		op = oe.op
	}
	d := &DeliveryError{Class: Transient, Status: schema.Status500, Op: op, Err: err}
	if top, ok := err.(*opError); ok {
		d.Err = top.err // Op names the stage; Error() would say it twice
	}
	if r := replyOf(err); r != nil {
		d.Reply = r
		switch {
		case r.Code == 530 || r.Code == 535 || r.Code == 534 || r.Code == 538:
			// Authentication: an operator can fix the credentials, so keep
			// the message (contract §4).
			d.Class, d.Status = Transient, schema.Status401
		case r.Code >= 400 && r.Code < 500:
			d.Class = Transient
		case r.Code >= 500:
			d.Class, d.Status = Permanent, permanentStatus(r, op)
		default:
			// A reply outside 4xx/5xx where an error was expected: the
			// server is confused; try again later.
			d.Class = Transient
		}
		return d
	}
	// No reply: network, TLS, timeouts, local errors.
	var (
		netErr  net.Error
		certErr *tls.CertificateVerificationError
		unkAuth x509.UnknownAuthorityError
		hostErr x509.HostnameError
		recErr  tls.RecordHeaderError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.As(err, &netErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		d.Class = Transient
	case errors.Is(err, errTLSRequired), errors.As(err, &certErr), errors.As(err, &unkAuth),
		errors.As(err, &hostErr), errors.As(err, &recErr), op == "tls":
		// A fault in the relay or its configuration, not in the message.
		d.Class = Transient
	case op == "build" || op == "file":
		d.Class = Permanent
		if op == "file" {
			d.Class = Transient // a full disk or a permission can be fixed
		}
	default:
		d.Class = Transient
	}
	return d
}

// permanentStatus maps a 5xx reply to the final status: 403 for policy
// (5.7.x, relay denied), 404 for an unknown recipient, 500 otherwise.
func permanentStatus(r *schema.SMTPReply, op string) schema.Status {
	low := strings.ToLower(r.Message)
	switch {
	case strings.HasPrefix(r.EnhancedCode, "5.7."),
		strings.Contains(low, "relay"), strings.Contains(low, "policy"),
		strings.Contains(low, "not permitted"), strings.Contains(low, "denied"):
		return schema.Status403
	case op == "rcpt" && (strings.HasPrefix(r.EnhancedCode, "5.1.") ||
		(r.EnhancedCode == "" && (r.Code == 550 || r.Code == 551 || r.Code == 553))):
		return schema.Status404
	}
	return schema.Status500
}

// rcptFailure is one recipient the server refused at RCPT.
type rcptFailure struct {
	addr string
	err  error
}

// classifyRecipients decides the outcome when every recipient was refused:
// 404 when all were unknown users, else the worst class among them
// (permanent only when all are permanent).
func classifyRecipients(fails []rcptFailure) *DeliveryError {
	d := &DeliveryError{Op: "rcpt", Class: Permanent, Status: schema.Status404}
	for _, f := range fails {
		c := Classify(withOp("rcpt", f.err))
		d.Recipients = append(d.Recipients, recipientResult(f.addr, c))
		d.Reply, d.Err = c.Reply, c.Err
		if c.Class == Transient {
			d.Class = Transient
		}
		if c.Status != schema.Status404 && d.Status == schema.Status404 {
			d.Status = c.Status
		}
	}
	if d.Class == Transient && d.Status == schema.Status404 {
		d.Status = schema.Status500
	}
	if len(fails) > 1 {
		d.Err = fmt.Errorf("all %d recipients refused, last: %w", len(fails), d.Err)
	} else {
		d.Err = fmt.Errorf("recipient refused: %w", d.Err)
	}
	return d
}

// recipientResult is the per-recipient entry of a result for a refused
// recipient.
func recipientResult(addr string, c *DeliveryError) schema.RecipientResult {
	rr := schema.RecipientResult{Address: addr, Status: c.Status}
	if c.Class == Transient {
		rr.Status = schema.Status202
	}
	if c.Reply != nil {
		rr.Code = c.Reply.Code
		rr.Message = strings.TrimSpace(c.Reply.EnhancedCode + " " + c.Reply.Message)
	}
	return rr
}
