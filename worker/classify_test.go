package worker

import (
	"context"
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
// failure, the class it gets, and the status if it ends the message.
func TestClassify(t *testing.T) {
	t.Parallel()
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	tests := []struct {
		name   string
		err    error
		class  Class
		status schema.Status
		reply  *schema.SMTPReply
	}{
		{"421 on greeting", withOp("hello", reply(421, "4.3.2 try later")), Transient, 500, &schema.SMTPReply{Code: 421, EnhancedCode: "4.3.2", Message: "try later"}},
		{"450 mailbox busy", withOp("rcpt", reply(450, "busy")), Transient, 500, &schema.SMTPReply{Code: 450, Message: "busy"}},
		{"451 local error", withOp("data-close", reply(451, "4.3.0 Local error")), Transient, 500, &schema.SMTPReply{Code: 451, EnhancedCode: "4.3.0", Message: "Local error"}},
		{"452 storage", withOp("mail", reply(452, "4.3.1 full")), Transient, 500, &schema.SMTPReply{Code: 452, EnhancedCode: "4.3.1", Message: "full"}},
		{"530 auth required", withOp("mail", reply(530, "5.7.0 Authentication required")), Transient, 401, &schema.SMTPReply{Code: 530, EnhancedCode: "5.7.0", Message: "Authentication required"}},
		{"535 auth failed", withOp("auth", reply(535, "5.7.8 bad credentials")), Transient, 401, &schema.SMTPReply{Code: 535, EnhancedCode: "5.7.8", Message: "bad credentials"}},
		{"550 5.7.1 policy", withOp("mail", reply(550, "5.7.1 sender rejected")), Permanent, 403, &schema.SMTPReply{Code: 550, EnhancedCode: "5.7.1", Message: "sender rejected"}},
		{"554 relay denied", withOp("rcpt", reply(554, "Relay access denied")), Permanent, 403, &schema.SMTPReply{Code: 554, Message: "Relay access denied"}},
		{"550 5.1.1 unknown user at rcpt", withOp("rcpt", reply(550, "5.1.1 no such user")), Permanent, 404, &schema.SMTPReply{Code: 550, EnhancedCode: "5.1.1", Message: "no such user"}},
		{"550 without enhanced code at rcpt", withOp("rcpt", reply(550, "unknown")), Permanent, 404, &schema.SMTPReply{Code: 550, Message: "unknown"}},
		{"552 message too big at data", withOp("data-close", reply(552, "5.3.4 too big")), Permanent, 500, &schema.SMTPReply{Code: 552, EnhancedCode: "5.3.4", Message: "too big"}},
		{"554 transaction failed", withOp("data-close", reply(554, "5.6.0 bad content")), Permanent, 500, &schema.SMTPReply{Code: 554, EnhancedCode: "5.6.0", Message: "bad content"}},
		{"EOF", withOp("data-close", io.EOF), Transient, 500, nil},
		{"unexpected EOF", withOp("write", io.ErrUnexpectedEOF), Transient, 500, nil},
		{"timeout", withOp("data-close", timeout), Transient, 500, nil},
		{"deadline exceeded", withOp("dial", context.DeadlineExceeded), Transient, 500, nil},
		{"connection refused", withOp("dial", &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}), Transient, 500, nil},
		{"connection reset", withOp("rcpt", &net.OpError{Op: "read", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}), Transient, 500, nil},
		{"broken pipe", withOp("write", fmt.Errorf("write: %w", syscall.EPIPE)), Transient, 500, nil},
		{"tls required, not offered", withOp("tls", errTLSRequired), Transient, 500, nil},
		{"unknown certificate authority", withOp("tls", x509.UnknownAuthorityError{}), Transient, 500, nil},
		{"file outbox full", withOp("file", errors.New("no space left on device")), Transient, 500, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Classify(tc.err)
			if got == nil {
				t.Fatal("Classify returned nil for an error")
			}
			if got.Class != tc.class || got.Status != tc.status {
				t.Errorf("class, status = %s, %d; want %s, %d", got.Class, got.Status, tc.class, tc.status)
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
	if err := (RetryPolicy{}).validate(); err == nil {
		t.Error("zero policy validated")
	}
}

// TestDecide is the decision table of DESIGN.md.
func TestDecide(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Initial: time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 3, MaxAge: 24 * time.Hour}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Second)
	base := schema.Result{Id: "x"}
	transient := Classify(withOp("rcpt", reply(451, "4.3.0 later")))
	auth := Classify(withOp("auth", reply(535, "5.7.8 no")))
	permanent := Classify(withOp("rcpt", reply(550, "5.1.1 unknown")))
	tests := []struct {
		name    string
		de      *DeliveryError
		attempt int
		state   schema.State
		status  schema.Status
		verb    ackVerb
		dead    bool
	}{
		{"sent", nil, 1, schema.StateSent, 200, verbAck, false},
		{"transient, attempts left", transient, 1, schema.StateDeferred, 202, verbNakDelay, false},
		{"transient, last attempt", transient, 3, schema.StateFailed, 500, verbTerm, true},
		{"auth, last attempt", auth, 3, schema.StateFailed, 401, verbTerm, true},
		{"auth, attempts left", auth, 2, schema.StateDeferred, 202, verbNakDelay, false},
		{"permanent", permanent, 1, schema.StateFailed, 404, verbTerm, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := decide(base, Delivery{Reply: &schema.SMTPReply{Code: 250}}, tc.de, tc.attempt, t0, now, p)
			if d.event == nil || d.event.State != tc.state || d.event.Status != tc.status || d.verb != tc.verb || d.dead != tc.dead {
				t.Fatalf("got %+v event %+v", d, d.event)
			}
			if tc.verb == verbNakDelay {
				if d.event.NextAttemptAt == nil || d.delay != d.event.NextAttemptAt.Sub(now) || d.delay <= 0 {
					t.Errorf("deferred without a consistent NextAttemptAt: delay %s, event %+v", d.delay, d.event)
				}
			}
		})
	}
}

func TestSenderPolicy(t *testing.T) {
	t.Parallel()
	p := senderPolicy{allowed: []string{"@example.com", "boss@other.org"}}
	for addr, want := range map[string]bool{
		"a@example.com": true, "A@EXAMPLE.COM": true, "boss@other.org": true,
		"x@other.org": false, "a@evil-example.com": false, "a@example.com.evil": false,
	} {
		if got := p.allows(addr); got != want {
			t.Errorf("allows(%q) = %v, want %v", addr, got, want)
		}
	}
	if !(senderPolicy{}).allows("anyone@anywhere") {
		t.Error("an empty list must allow every sender")
	}
}
