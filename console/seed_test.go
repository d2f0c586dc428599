package console

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// seeded names the messages seed published, by what became of them.
type seeded struct {
	sent, scheduled, failed, deferred, cancelled []string
	partial                                      string // sent to one recipient, the other suppressed
	batch                                        string
}

// seed publishes a realistic mix of messages, in every lane and state,
// through the real worker and SMTP server, and waits until each has
// reached its state and the index has it.
func (s *stack) seed(t *testing.T) seeded {
	t.Helper()
	s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "ghost@example.net", Code: 550, Enhanced: "5.1.1", Message: "<ghost@example.net>: Recipient address rejected: User unknown"})
	s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "postmaster@blocked.example", Code: 554, Enhanced: "5.7.1", Message: "Relay access denied"})
	s.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "billing@slow.example", Code: 451, Enhanced: "4.3.0", Message: "Temporary local problem, please try again later"})

	var d seeded
	d.batch = "spring-sale-2026"
	customers := []string{"ana.silva@example.com", "piotr.nowak@example.pl", "jan.kowalski@example.com", "marie.dubois@example.fr", "kenji.sato@example.jp"}
	for i, to := range customers {
		d.sent = append(d.sent, s.publish(t, map[string]any{"Id": fmt.Sprintf("order-%d-shipped", 1040+i), "To": to, "From": "shop@acme.example",
			"Subject": fmt.Sprintf("Your order #%d has shipped", 1040+i), "Body": "It is on its way.", "Metadata": map[string]string{"order": fmt.Sprint(1040 + i)}}))
	}
	for i, to := range customers[:3] {
		d.sent = append(d.sent, s.publish(t, map[string]any{"Id": fmt.Sprintf("signin-code-%d", 70+i), "To": to, "From": "security@acme.example",
			"Subject": fmt.Sprintf("Your sign-in code: %06d", 482913+i*7919), "Body": "Use it within 10 minutes.", "Priority": "urgent"}))
	}
	for i := range 8 {
		d.sent = append(d.sent, s.publish(t, map[string]any{"Id": fmt.Sprintf("nl-spring-%03d", i+1), "To": fmt.Sprintf("reader%03d@example.org", i+1),
			"From": "news@acme.example", "Subject": "Spring sale: 20 % off everything until Sunday", "Body": "…", "Priority": "bulk", "BatchId": d.batch}))
	}
	for i, to := range customers[3:] {
		d.scheduled = append(d.scheduled, s.publish(t, map[string]any{"Id": fmt.Sprintf("reminder-appointment-%d", i+1), "To": to, "From": "care@acme.example",
			"Subject": "Reminder: your appointment tomorrow at 10:00", "Body": "See you.", "SendAt": time.Now().Add(time.Duration(2+i) * time.Hour).Format(time.RFC3339)}))
	}
	d.cancelled = append(d.cancelled, s.publish(t, map[string]any{"Id": "winback-offer-7", "To": "lapsed@example.com", "From": "news@acme.example",
		"Subject": "We miss you: 15 % off your next order", "Body": "…", "Priority": "bulk", "SendAt": time.Now().Add(24 * time.Hour).Format(time.RFC3339)}))
	d.failed = append(d.failed, s.publish(t, map[string]any{"Id": "welcome-ghost", "To": "ghost@example.net", "From": "hello@acme.example",
		"Subject": "Welcome to Acme", "Body": "Hello!"}))
	d.failed = append(d.failed, s.publish(t, map[string]any{"Id": "report-weekly-19", "To": "postmaster@blocked.example", "From": "reports@acme.example",
		"Subject": "Weekly delivery report, week 19", "Body": "…"}))
	d.deferred = append(d.deferred, s.publish(t, map[string]any{"Id": "invoice-INV-2026-0042", "To": "billing@slow.example", "From": "billing@acme.example",
		"Subject": "Invoice INV-2026-0042", "Body": "Please find attached…"}))

	for _, id := range d.sent {
		s.waitState(t, id, schema.StateSent)
	}
	for _, id := range d.scheduled {
		s.waitState(t, id, schema.StateScheduled)
	}
	for _, id := range d.failed {
		s.waitState(t, id, schema.StateFailed)
	}
	for _, id := range d.deferred {
		s.waitState(t, id, schema.StateDeferred)
	}
	s.waitState(t, d.cancelled[0], schema.StateScheduled)
	p, err := producer.New(s.js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if res, err := p.Cancel(ctx, d.cancelled[0]); err != nil || res.Outcome != producer.Cancelled {
		t.Fatalf("cancel %s: %v %v", d.cancelled[0], res, err)
	}
	// ghost@example.net is now suppressed (a bounce): a message to it and
	// to another recipient goes to the other alone.
	d.partial = s.publish(t, map[string]any{"Id": "team-update-12", "To": "ana.silva@example.com; ghost@example.net", "From": "team@acme.example",
		"Subject": "Team update #12", "Body": "…"})
	s.waitState(t, d.partial, schema.StateSent)
	d.sent = append(d.sent, d.partial)
	for _, e := range []suppress.Entry{{Address: "complaints@example.com", Reason: suppress.Manual}, {Address: "former.customer@example.org", Reason: suppress.Unsubscribe}} {
		if _, err := s.store.Add(ctx, e, 0); err != nil {
			t.Fatal(err)
		}
	}
	s.waitIndexed(t)
	return d
}
