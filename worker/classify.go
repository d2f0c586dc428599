package worker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"regexp"
	"strings"

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

// Op is the step of a delivery at which a failure happened.
type Op string

// The steps of a delivery, in the order they happen.
const (
	OpConfig    Op = "config"     // the request names a connection the worker does not have
	OpBuild     Op = "build"      // rendering the message, or an address unfit for the protocol
	OpRate      Op = "rate"       // waiting for the connection's rate limit
	OpPool      Op = "pool"       // waiting for a free session of the pool
	OpDial      Op = "dial"       // opening the TCP connection
	OpTLS       Op = "tls"        // a TLS handshake, a certificate, or TLS required but not offered
	OpHello     Op = "hello"      // the greeting, EHLO/HELO or the STARTTLS command
	OpAuth      Op = "auth"       // AUTH
	OpMail      Op = "mail"       // MAIL FROM
	OpRcpt      Op = "rcpt"       // RCPT TO
	OpData      Op = "data"       // the DATA command
	OpWrite     Op = "write"      // writing the message after 354
	OpDataClose Op = "data-close" // the reply to the final "." of DATA
	OpFile      Op = "file"       // writing the .eml file of the outbox
	OpSend      Op = "send"       // a transport's error that names no step
)

// DeliveryError is a failed delivery after classification. Classify and
// classifyRecipients are the only functions that create one.
type DeliveryError struct {
	// Class says whether a retry may help.
	Class Class
	// Status is what the final result says if this failure ends the
	// message: 401, 403, 404 or 500.
	Status schema.Status
	// Op is the step it happened at.
	Op Op
	// Reply is the SMTP reply, or nil when the server never answered.
	Reply *schema.SMTPReply
	// Recipients holds the per-recipient rejections when Op is rcpt.
	Recipients []schema.RecipientResult
	// Uncertain says the failure came after the final "." of DATA and
	// before the server's reply (a timeout, a dropped connection): the
	// relay may have the message, so a retry may deliver it twice.
	Uncertain bool
	// Err is the underlying error.
	Err error
}

// Error returns the step and the cause, such as "rcpt: 550 5.1.1 no such
// user".
func (e *DeliveryError) Error() string { return string(e.Op) + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *DeliveryError) Unwrap() error { return e.Err }

// errShutdown is the cancellation cause of in-flight handlers when the grace
// period of a shutdown has run out. It is not a failure of the message:
// handle sees it in the context's cause and returns the message to the
// stream without classifying anything.
var errShutdown = errors.New("worker shutting down")

// errCancelled is returned by a transport that found the message cancelled
// right before it would have begun the transaction: nothing was sent.
var errCancelled = errors.New("cancelled before the transaction began")

// errTLSRequired is returned when a connection demands TLS and the server
// does not offer STARTTLS. The message is never sent in clear.
var errTLSRequired = errors.New("the server does not offer STARTTLS and the connection requires TLS; not sending in clear")

// opError carries the step an error happened at until Classify sees it.
type opError struct {
	op  Op
	err error
}

func (e *opError) Error() string { return string(e.op) + ": " + e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

// withOp records the step op on err (nil stays nil).
func withOp(op Op, err error) error {
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
// what an SMTP or network failure means; its test table (classify_test.go)
// is the documentation. It returns nil for a nil error, and a
// *DeliveryError found in err's chain as it is.
//
// The rules: a reply of 530, 534, 535 or 538 (authentication) is transient
// with status 401, because an operator can fix the credentials (contract
// §4); any other 4xx, and any reply outside 4xx and 5xx where a failure was
// expected, is transient; a 5xx is permanent, with the status of
// permanentStatus. Without a reply (a dropped or refused connection, a
// timeout, a TLS failure, a full disk in the outbox) the failure is
// transient, except a message that cannot be rendered, which no retry
// mends; when it came after the final "." of DATA it is also Uncertain. A TLS failure is reported at OpTLS whatever step it surfaced in,
// so that the result says the relay's TLS is at fault.
func Classify(err error) *DeliveryError {
	if err == nil {
		return nil
	}
	var de *DeliveryError
	if errors.As(err, &de) {
		return de
	}
	d := &DeliveryError{Class: Transient, Status: schema.Status500, Op: OpSend, Err: err}
	var oe *opError
	if errors.As(err, &oe) {
		d.Op = oe.op
		if top, ok := err.(*opError); ok {
			d.Err = top.err // Op names the step; Error() would say it twice
		}
	}
	if tlsFailure(err) {
		d.Op = OpTLS
	}
	r := replyOf(err)
	d.Reply = r
	d.Uncertain = r == nil && d.Op == OpDataClose
	switch {
	case r == nil && d.Op == OpBuild:
		d.Class = Permanent
	case r == nil:
		// Network, TLS, timeouts, local errors: the relay or the machine,
		// not the message, is at fault.
	case r.Code == 530 || r.Code == 534 || r.Code == 535 || r.Code == 538:
		d.Status = schema.Status401
	case r.Code >= 500:
		d.Class, d.Status = Permanent, permanentStatus(r, d.Op)
	}
	return d
}

// permanentStatus maps a 5xx reply to the final status: 403 for policy,
// 404 for an unknown recipient, 500 otherwise. A specific enhanced status
// code (RFC 3463) decides when there is one: 5.7.x is policy, 5.1.x at RCPT
// an unknown recipient, and any other specific code neither, whatever the
// text says ("550 5.1.1 <x>: Recipient address rejected: access denied" is
// an unknown recipient). Without one (or with the generic 5.0.0) the text
// decides: relay, policy, "not permitted" or "denied" is policy; and 550,
// 551 or 553 at RCPT is an unknown recipient.
func permanentStatus(r *schema.SMTPReply, op Op) schema.Status {
	enh := r.EnhancedCode
	switch {
	case strings.HasPrefix(enh, "5.7."):
		return schema.Status403
	case strings.HasPrefix(enh, "5.1.") && op == OpRcpt:
		return schema.Status404
	case enh != "" && enh != "5.0.0":
		return schema.Status500
	}
	low := strings.ToLower(r.Message)
	switch {
	case strings.Contains(low, "relay"), strings.Contains(low, "policy"),
		strings.Contains(low, "not permitted"), strings.Contains(low, "denied"):
		return schema.Status403
	case op == OpRcpt && (r.Code == 550 || r.Code == 551 || r.Code == 553):
		return schema.Status404
	}
	return schema.Status500
}

// tlsFailure reports whether err comes from TLS: a certificate that does
// not verify, an alert from the server, a peer that does not speak TLS, or
// a connection that requires TLS to a server that does not offer it.
func tlsFailure(err error) bool {
	var (
		certErr  *tls.CertificateVerificationError
		unkAuth  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
	)
	return errors.Is(err, errTLSRequired) ||
		errors.As(err, &certErr) || errors.As(err, &unkAuth) || errors.As(err, &hostErr) ||
		errors.As(err, &invalid) || errors.As(err, &recErr) || errors.As(err, &alertErr)
}

// isReply reports whether err is an SMTP reply (the session is still in
// step with the server) rather than a broken connection.
func isReply(err error) bool {
	var tp *textproto.Error
	return errors.As(err, &tp) && !errors.Is(err, io.EOF)
}

// staleSession reports whether err at the first command of a reused
// session means that the session was already dead: the server closed it
// while it sat idle (EOF, reset, broken pipe) or answers 421 (closing).
// The pool then re-dials once, which is not a delivery attempt.
func staleSession(err error) bool {
	var tp *textproto.Error
	if errors.As(err, &tp) {
		return tp.Code == 421
	}
	return true
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
	d := &DeliveryError{Op: OpRcpt, Class: Permanent, Status: schema.Status404}
	for _, f := range fails {
		c := Classify(withOp(OpRcpt, f.err))
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

// bounced reports whether a recipient's outcome means the address does not
// exist, so that it is added to the suppression list (contract §9): a
// permanent refusal with an enhanced status code of 5.1.x, the address
// status codes of RFC 3463 (550 5.1.1 "no such user", 553 5.1.3 "bad
// address syntax", 551 5.1.6 "mailbox has moved", …), whatever the basic
// code. A bare 550 without an enhanced code is not taken as one: servers
// give it for policy refusals too. Nor are 5.1.7 and 5.1.8, which blame
// the sender's address, not the recipient's.
func bounced(r schema.RecipientResult) bool {
	if r.Suppressed || r.Code < 500 || r.Code > 599 {
		return false
	}
	enh := enhancedRe.FindString(r.Message)
	return strings.HasPrefix(enh, "5.1.") && enh != "5.1.7" && enh != "5.1.8"
}
