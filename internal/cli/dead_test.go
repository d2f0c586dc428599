package cli

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// resultEvents reads the result events of id from the start of the result
// stream until one satisfies until, and returns them all.
func resultEvents(t *testing.T, ctx context.Context, js jetstream.JetStream, id string, until func(schema.Result) bool) []schema.Result {
	t.Helper()
	n := schema.DefaultNames()
	cons, err := js.OrderedConsumer(ctx, n.ResultStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{n.ResultSubject(id)},
	})
	if err != nil {
		t.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	var events []schema.Result
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			t.Fatalf("result events of %s: %v (so far %+v)", id, err, events)
		}
		var res schema.Result
		if err := json.Unmarshal(m.Data(), &res); err != nil {
			t.Fatal(err)
		}
		events = append(events, res)
		if until(res) {
			return events
		}
	}
}

func sent(r schema.Result) bool { return r.State == schema.StateSent }

// eventSummary is "state/status/attempt" of each event.
func eventSummary(events []schema.Result) []string {
	var out []string
	for _, e := range events {
		out = append(out, string(e.State)+"/"+e.Status.String()+"/"+string(rune('0'+e.Attempt)))
	}
	return out
}

// TestDeadLetters fails two messages for good (a policy rejection of the
// sender, once), lists them, replays them one by Id and one with --all,
// and checks that each is then delivered once under its own Id, with
// attempts counted from 1 again, and that the dead letters are gone.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "MAIL", Match: "first@example.com", Code: 550, Enhanced: "5.7.1", Message: "sender blocked by policy", Times: 1})
	srv.AddFault(smtptest.Fault{Cmd: "MAIL", Match: "second@example.com", Code: 550, Enhanced: "5.7.1", Times: 1})
	startWorker(t, "--nats-url", url, "--smtp-url", srv.URL(), "--smtp-from", "default@example.com", "--http-addr", "127.0.0.1:0")
	ctx := testCtx(t)
	_, js := jstest.Connect(t, url)

	// One with an Id key, one whose Id is only in the Nats-Msg-Id header.
	r := jetmail(t, ctx, "", "send", "--nats-url", url, "--id", "dead-one", "--to", "a@example.com",
		"--cc", "b@example.com", "--from", "first@example.com", "--subject", "Order 1", "--wait")
	if _, res := splitSendOutput(t, r.stdout); r.code != 1 || res.Status != schema.Status403 {
		t.Fatalf("exit %d, status %d; want 1 and 403", r.code, res.Status)
	}
	r = jetmail(t, ctx, `{"To":"c@example.com","From":"second@example.com","Subject":"No Id key"}`,
		"send", "--nats-url", url, "--file", "-", "--wait")
	id2, res := splitSendOutput(t, r.stdout)
	if r.code != 1 || res.Status != schema.Status403 {
		t.Fatalf("exit %d, status %d; want 1 and 403", r.code, res.Status)
	}

	// The table.
	r = jetmail(t, ctx, "", "dead", "list", "--nats-url", url)
	if r.code != 0 {
		t.Fatalf("dead list: exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("dead list printed %q, want a header and two rows", r.stdout)
	}
	for _, want := range []string{"dead-one", "403", "sender blocked by policy", "Order 1", "a@example.com +1"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("first row %q lacks %q", lines[1], want)
		}
	}
	if !strings.HasPrefix(lines[2], id2+" ") || !strings.Contains(lines[2], "No Id key") {
		t.Errorf("second row %q, want %s and its subject", lines[2], id2)
	}

	// JSON lines: the dead letters as stored.
	r = jetmail(t, ctx, "", "dead", "list", "--json", "--nats-url", url)
	var letters []schema.DeadLetter
	for line := range strings.Lines(r.stdout) {
		var d schema.DeadLetter
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		letters = append(letters, d)
	}
	if len(letters) != 2 || letters[0].Result.Id != "dead-one" || letters[1].Result.Id != id2 ||
		letters[0].Subject != "mail.send" || letters[0].Result.State != schema.StateFailed ||
		!strings.Contains(string(letters[1].Request), `"No Id key"`) {
		t.Fatalf("dead list --json = %+v", letters)
	}
	firstLetter := strings.SplitAfter(r.stdout, "\n")[0]

	// Replay by Id, the newest dead letter first (so that listing the rest
	// must not wait for the stream's last sequence, which is gone); the
	// fault has fired, so it is delivered, under the Id that was only in
	// the Nats-Msg-Id header.
	r = jetmail(t, ctx, "", "dead", "replay", id2, "--nats-url", url)
	if r.code != 0 || r.stdout != "replayed "+id2+"\n" {
		t.Fatalf("replay: exit %d, stdout %q", r.code, r.stdout)
	}
	want := []string{"accepted/202/1", "failed/403/1", "accepted/202/1", "sent/200/1"}
	if got := eventSummary(resultEvents(t, ctx, js, id2, sent)); !slices.Equal(got, want) {
		t.Errorf("events of %s: %v, want %v", id2, got, want)
	}
	r = jetmail(t, ctx, "", "dead", "list", "--nats-url", url)
	if strings.Contains(r.stdout, id2) || !strings.Contains(r.stdout, "dead-one") {
		t.Errorf("after the replay, dead list = %q; want only dead-one", r.stdout)
	}

	// Replay the rest.
	r = jetmail(t, ctx, "", "dead", "replay", "--all", "--nats-url", url)
	if r.code != 0 || r.stdout != "replayed dead-one\n" {
		t.Fatalf("replay --all: exit %d, stdout %q", r.code, r.stdout)
	}
	if got := eventSummary(resultEvents(t, ctx, js, "dead-one", sent)); !slices.Equal(got, want) {
		t.Errorf("events of dead-one: %v, want %v", got, want)
	}
	r = jetmail(t, ctx, "", "dead", "list", "--nats-url", url)
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no dead letters") {
		t.Errorf("dead list after replaying all: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// Replaying twice does nothing: the dead letter is gone.
	r = jetmail(t, ctx, "", "dead", "replay", "dead-one", "--nats-url", url)
	if r.code != 1 || !strings.Contains(r.stderr, "no dead letter for dead-one") {
		t.Errorf("second replay: exit %d, stderr %q; want 1", r.code, r.stderr)
	}
	// A stale dead letter of an Id that was sent since is removed, not
	// replayed.
	if _, err := js.Publish(ctx, "mail.dead.dead-one", []byte(firstLetter)); err != nil {
		t.Fatal(err)
	}
	r = jetmail(t, ctx, "", "dead", "replay", "--all", "--nats-url", url)
	if r.code != 0 || r.stdout != "skipped dead-one: already sent\n" {
		t.Errorf("replay of a sent Id: exit %d, stdout %q", r.code, r.stdout)
	}
	if r = jetmail(t, ctx, "", "dead", "list", "--nats-url", url); r.stdout != "" {
		t.Errorf("the stale dead letter is still listed: %q", r.stdout)
	}

	msgs := srv.Messages()
	if len(msgs) != 2 || msgs[0].From != "second@example.com" || msgs[1].From != "first@example.com" {
		t.Errorf("server got %d messages (%+v), want each replayed one once", len(msgs), msgs)
	}
}

func TestDeadReplayAllNotFromEnv(t *testing.T) {
	t.Parallel()
	root := newRootCmd(stdio{}, mapEnv(nil))
	cmd, _, err := root.Find([]string{"dead", "replay"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := applyEnv(cmd.Flags(), mapEnv(map[string]string{"JETMAIL_ALL": "true"}))
	if err != nil || len(set) != 0 || cmd.Flags().Lookup("all").Value.String() != "false" {
		t.Errorf("JETMAIL_ALL set %v (%v); --all must come from the command line only", set, err)
	}
}

func TestDeadUsage(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t) // no worker ever ran: no dead-letter stream
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dead", "replay", "--nats-url", url}, "the Ids to replay, or --all"},
		{[]string{"dead", "replay", "--all", "some-id", "--nats-url", url}, "not both"},
		{[]string{"dead", "replay", "not/an/id", "--nats-url", url}, "not a valid Id"},
		{[]string{"dead", "bogus"}, "unknown command"},
		{[]string{"dead", "list", "extra"}, "takes no arguments"},
		{[]string{"dead", "list", "--nats-url", url}, "no JetStream stream JETMAIL_DEAD: is a worker running?"},
		{[]string{"dead", "replay", "--all", "--nats-url", url}, "no JetStream stream JETMAIL_DEAD"},
		{[]string{"dead", "list", "--nats-url", deadURL(t)}, "is `jetmail worker` running?"},
	} {
		r := jetmail(t, testCtx(t), "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("jetmail %s: exit %d, stderr %q; want 2 and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}
