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
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

func reply(code int, msg string) error { return &textproto.Error{Code: code, Msg: msg} }

// TestClassify is the classification table of DESIGN.md: every kind of
// failure, the class it gets, the status if it ends the message, and the
// step it is reported at. Each arm of Classify and permanentStatus has a
// row that fails when the arm is removed.
func TestClassify(t *testing.T) {
	t.Parallel()
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	tests := []struct {
		name   string
		err    error
		class  Class
		status schema.Status
		op     Op
		reply  *schema.SMTPReply
	}{
		// Replies: 4xx transient, auth 401, 5xx permanent by permanentStatus.
		{"421 on greeting", withOp(OpHello, reply(421, "4.3.2 try later")), Transient, 500, OpHello, &schema.SMTPReply{Code: 421, EnhancedCode: "4.3.2", Message: "try later"}},
		{"450 mailbox busy", withOp(OpRcpt, reply(450, "busy")), Transient, 500, OpRcpt, &schema.SMTPReply{Code: 450, Message: "busy"}},
		{"451 local error", withOp(OpDataClose, reply(451, "4.3.0 Local error")), Transient, 500, OpDataClose, &schema.SMTPReply{Code: 451, EnhancedCode: "4.3.0", Message: "Local error"}},
		{"452 storage", withOp(OpMail, reply(452, "4.3.1 full")), Transient, 500, OpMail, &schema.SMTPReply{Code: 452, EnhancedCode: "4.3.1", Message: "full"}},
		{"354 where a failure was expected", withOp(OpMail, reply(354, "go ahead")), Transient, 500, OpMail, &schema.SMTPReply{Code: 354, Message: "go ahead"}},
		{"530 auth required", withOp(OpMail, reply(530, "5.7.0 Authentication required")), Transient, 401, OpMail, &schema.SMTPReply{Code: 530, EnhancedCode: "5.7.0", Message: "Authentication required"}},
		{"534 mechanism too weak", withOp(OpAuth, reply(534, "5.7.9 too weak")), Transient, 401, OpAuth, &schema.SMTPReply{Code: 534, EnhancedCode: "5.7.9", Message: "too weak"}},
		{"535 auth failed", withOp(OpAuth, reply(535, "5.7.8 bad credentials")), Transient, 401, OpAuth, &schema.SMTPReply{Code: 535, EnhancedCode: "5.7.8", Message: "bad credentials"}},
		{"538 encryption required for auth", withOp(OpAuth, reply(538, "5.7.11 encrypt first")), Transient, 401, OpAuth, &schema.SMTPReply{Code: 538, EnhancedCode: "5.7.11", Message: "encrypt first"}},
		{"550 5.7.1 policy", withOp(OpMail, reply(550, "5.7.1 sender rejected")), Permanent, 403, OpMail, &schema.SMTPReply{Code: 550, EnhancedCode: "5.7.1", Message: "sender rejected"}},
		{"554 relay denied without enhanced code", withOp(OpRcpt, reply(554, "Relay access denied")), Permanent, 403, OpRcpt, &schema.SMTPReply{Code: 554, Message: "Relay access denied"}},
		{"550 5.0.0 with policy text", withOp(OpRcpt, reply(550, "5.0.0 rejected by policy")), Permanent, 403, OpRcpt, &schema.SMTPReply{Code: 550, EnhancedCode: "5.0.0", Message: "rejected by policy"}},
		{"550 5.1.1 unknown user at rcpt", withOp(OpRcpt, reply(550, "5.1.1 no such user")), Permanent, 404, OpRcpt, &schema.SMTPReply{Code: 550, EnhancedCode: "5.1.1", Message: "no such user"}},
		{"550 5.1.1 with 'denied' in the text: the code decides", withOp(OpRcpt, reply(550, "5.1.1 <x@example.com>: Recipient address rejected: access denied")), Permanent, 404, OpRcpt,
			&schema.SMTPReply{Code: 550, EnhancedCode: "5.1.1", Message: "<x@example.com>: Recipient address rejected: access denied"}},
		{"553 5.1.3 bad address at mail is not an unknown recipient", withOp(OpMail, reply(553, "5.1.3 bad sender address")), Permanent, 500, OpMail, &schema.SMTPReply{Code: 553, EnhancedCode: "5.1.3", Message: "bad sender address"}},
		{"550 5.2.1 mailbox disabled with 'denied' text", withOp(OpRcpt, reply(550, "5.2.1 mailbox disabled, delivery denied")), Permanent, 500, OpRcpt, &schema.SMTPReply{Code: 550, EnhancedCode: "5.2.1", Message: "mailbox disabled, delivery denied"}},
		{"550 without enhanced code at rcpt", withOp(OpRcpt, reply(550, "unknown")), Permanent, 404, OpRcpt, &schema.SMTPReply{Code: 550, Message: "unknown"}},
		{"551 without enhanced code at rcpt", withOp(OpRcpt, reply(551, "user not local")), Permanent, 404, OpRcpt, &schema.SMTPReply{Code: 551, Message: "user not local"}},
		{"550 without enhanced code at mail", withOp(OpMail, reply(550, "no")), Permanent, 500, OpMail, &schema.SMTPReply{Code: 550, Message: "no"}},
		{"552 message too big at data", withOp(OpDataClose, reply(552, "5.3.4 too big")), Permanent, 500, OpDataClose, &schema.SMTPReply{Code: 552, EnhancedCode: "5.3.4", Message: "too big"}},
		{"554 transaction failed", withOp(OpDataClose, reply(554, "5.6.0 bad content")), Permanent, 500, OpDataClose, &schema.SMTPReply{Code: 554, EnhancedCode: "5.6.0", Message: "bad content"}},
		// No reply: transient, except a message that cannot be rendered.
		{"EOF", withOp(OpDataClose, io.EOF), Transient, 500, OpDataClose, nil},
		{"unexpected EOF", withOp(OpWrite, io.ErrUnexpectedEOF), Transient, 500, OpWrite, nil},
		{"timeout", withOp(OpDataClose, timeout), Transient, 500, OpDataClose, nil},
		{"deadline exceeded", withOp(OpDial, context.DeadlineExceeded), Transient, 500, OpDial, nil},
		{"connection refused", withOp(OpDial, &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}), Transient, 500, OpDial, nil},
		{"connection reset", withOp(OpRcpt, &net.OpError{Op: "read", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}), Transient, 500, OpRcpt, nil},
		{"broken pipe", withOp(OpWrite, fmt.Errorf("write: %w", syscall.EPIPE)), Transient, 500, OpWrite, nil},
		{"file outbox full", withOp(OpFile, errors.New("no space left on device")), Transient, 500, OpFile, nil},
		{"message cannot be rendered", withOp(OpBuild, errors.New("render message: boom")), Permanent, 500, OpBuild, nil},
		{"an error without a step", errors.New("odd"), Transient, 500, OpSend, nil},
		// TLS failures are reported at OpTLS whatever step they surfaced in.
		{"tls required, not offered", withOp(OpTLS, errTLSRequired), Transient, 500, OpTLS, nil},
		{"unknown certificate authority in STARTTLS", withOp(OpHello, x509.UnknownAuthorityError{}), Transient, 500, OpTLS, nil},
		{"hostname mismatch", withOp(OpHello, x509.HostnameError{Host: "relay"}), Transient, 500, OpTLS, nil},
		{"tls alert", withOp(OpHello, tls.AlertError(40)), Transient, 500, OpTLS, nil},
		{"not a TLS server", withOp(OpDial, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), Transient, 500, OpTLS, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tc.err)
			if got == nil {
				t.Fatal("Classify returned nil for an error")
			}
			if got.Class != tc.class || got.Status != tc.status || got.Op != tc.op {
				t.Errorf("class, status, op = %s, %d, %s; want %s, %d, %s", got.Class, got.Status, got.Op, tc.class, tc.status, tc.op)
			}
			if diff := cmp.Diff(tc.reply, got.Reply); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			if !errors.Is(got, tc.err) && !errors.Is(got, errors.Unwrap(tc.err)) {
				t.Errorf("the cause is not reachable with errors.Is: %v", got)
			}
		})
	}
	if Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
	de := &DeliveryError{Class: Permanent, Status: schema.Status404, Op: OpRcpt, Err: errors.New("x")}
	if got := Classify(fmt.Errorf("wrapped: %w", de)); got != de {
		t.Errorf("a classified error is classified again: %+v", got)
	}
}

// TestUncertain: only a failure after the final "." and before any reply
// leaves the relay possibly holding the message.
func TestUncertain(t *testing.T) {
	t.Parallel()
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"timeout waiting for the reply to the dot", withOp(OpDataClose, timeout), true},
		{"dropped after the dot", withOp(OpDataClose, io.EOF), true},
		{"451 after the dot", withOp(OpDataClose, reply(451, "4.3.0 later")), false},
		{"dropped while writing the message", withOp(OpWrite, io.EOF), false},
		{"dropped before DATA", withOp(OpRcpt, io.EOF), false},
	} {
		if got := Classify(tc.err).Uncertain; got != tc.want {
			t.Errorf("%s: Uncertain = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSessionShape is the table of the session-shape checks: whether an
// error is a reply (the session is in step) and whether an error at the
// first command of a reused session means it was already dead.
func TestSessionShape(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		err          error
		isReply, old bool
	}{
		{"421 closing", withOp(OpMail, reply(421, "4.4.2 idle too long")), true, true},
		{"451 at mail", withOp(OpMail, reply(451, "later")), true, false},
		{"550 at mail", withOp(OpMail, reply(550, "no")), true, false},
		{"EOF", withOp(OpMail, io.EOF), false, true},
		{"reset", withOp(OpMail, &net.OpError{Op: "read", Err: syscall.ECONNRESET}), false, true},
	} {
		if got := isReply(tc.err); got != tc.isReply {
			t.Errorf("%s: isReply = %v, want %v", tc.name, got, tc.isReply)
		}
		if got := staleSession(tc.err); got != tc.old {
			t.Errorf("%s: staleSession = %v, want %v", tc.name, got, tc.old)
		}
	}
}

func TestClassifyRecipients(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fails  []rcptFailure
		class  Class
		status schema.Status
	}{
		{"all unknown", []rcptFailure{{"a@x", reply(550, "5.1.1 no")}, {"b@x", reply(550, "5.1.1 no")}}, Permanent, 404},
		{"unknown and policy", []rcptFailure{{"a@x", reply(550, "5.1.1 no")}, {"b@x", reply(550, "5.7.1 denied")}}, Permanent, 403},
		{"unknown and greylisted", []rcptFailure{{"a@x", reply(550, "5.1.1 no")}, {"b@x", reply(450, "4.2.0 greylisted")}}, Transient, 500},
		{"all greylisted", []rcptFailure{{"a@x", reply(451, "4.7.1 later")}}, Transient, 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := classifyRecipients(tc.fails)
			if got.Class != tc.class || got.Status != tc.status {
				t.Errorf("class, status = %s, %d; want %s, %d", got.Class, got.Status, tc.class, tc.status)
			}
			if len(got.Recipients) != len(tc.fails) {
				t.Errorf("%d recipient results, want %d", len(got.Recipients), len(tc.fails))
			}
		})
	}
}

func TestRetryPolicy(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Initial: 30 * time.Second, Multiplier: 2, MaxInterval: 5 * time.Minute, MaxAttempts: 6, MaxAge: time.Hour}
	want := []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if next, ok := p.Next(1, t0, t0.Add(time.Second)); !ok || next != t0.Add(31*time.Second) {
		t.Errorf("Next(1) = %s, %v", next, ok)
	}
	if _, ok := p.Next(6, t0, t0); ok {
		t.Error("Next after MaxAttempts should give up")
	}
	if _, ok := p.Next(2, t0, t0.Add(59*time.Minute+time.Second)); ok {
		t.Error("Next past MaxAge should give up")
	}
	j := p
	j.Jitter = 0.5
	for range 100 {
		if d := j.Delay(1); d < 15*time.Second || d > 45*time.Second {
			t.Fatalf("jittered Delay(1) = %s, outside [15s, 45s]", d)
		}
	}
	if errs := (RetryPolicy{}).validate(); len(errs) != 4 {
		t.Errorf("zero policy: %d errors, want one for Initial, Multiplier, MaxAttempts and MaxAge: %v", len(errs), errs)
	}
}
