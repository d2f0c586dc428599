package producer_test

import (
	"encoding/json"
	"testing"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// TestReplayKeepsLane replays dead letters of the urgent and bulk lanes
// and of an old subject: each request comes back on the subject it was
// published on, so in its lane, and an obsolete subject becomes the
// normal lane's.
func TestReplayKeepsLane(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.Names{})
	names := b.names.WithDefaults()
	ctx := t.Context()
	for i, tc := range []struct{ subject, want string }{
		{"mail.urgent", "mail.urgent"},
		{"mail.bulk.newsletter", "mail.bulk.newsletter"},
		{"mail.send.tenant-1", "mail.send.tenant-1"},
		{"mail.old-subject", "mail.send"},
	} {
		id := []string{"rp-urgent", "rp-bulk", "rp-normal", "rp-old"}[i]
		dl := schema.DeadLetter{
			Request: json.RawMessage(`{"Id":"` + id + `","To":"jan@example.com","Subject":"again"}`),
			Subject: tc.subject,
			Result:  schema.Result{Id: id, Status: schema.Status500, State: schema.StateFailed},
		}
		data, _ := json.Marshal(dl)
		if _, err := b.js.Publish(ctx, names.DeadSubject(id), data); err != nil {
			t.Fatal(err)
		}
		d, err := b.p.DeadLetterOf(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := b.p.Replay(ctx, d); err != nil || out != producer.Replayed {
			t.Fatalf("replay %s: %v, %v", id, out, err)
		}
		m, err := b.requests.GetLastMsgForSubject(ctx, tc.want)
		if err != nil {
			t.Fatalf("%s published on %s: no request on %s: %v", id, tc.subject, tc.want, err)
		}
		var req struct{ Id string }
		if json.Unmarshal(m.Data, &req) != nil || req.Id != id {
			t.Errorf("the request on %s is %s, want %s's", tc.want, m.Data, id)
		}
	}
}
