package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/spf13/cobra"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

const deadLong = `Requests that fail for good (a permanent SMTP rejection, a sender that is
not allowed, or retries exhausted) are kept in the dead-letter stream
(JETMAIL_DEAD, subject mail.dead.<Id>) with their final result, for 30 days
by default. Invalid requests (status 400) are not: replaying them would fail
again.

  jetmail dead list            the dead letters, as a table (or --json)
  jetmail dead replay ID...    publish them again, then remove them
  jetmail dead replay --all    every dead letter`

func newDeadCmd(s stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "List and replay dead letters: requests that failed for good",
		Long:  deadLong,
		Example: `  jetmail dead list
  jetmail dead list --json | jq -c 'select(.Result.Status == 403)'
  jetmail dead replay order-1234-confirmation
  jetmail dead replay --all`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return badFlags("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newDeadListCmd(s), newDeadReplayCmd(s))
	return cmd
}

func newDeadListCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the dead letters",
		Long: `List the dead letters, oldest first: for each Id the last request that failed
for good, with its final Status, Error and Time and the request's Subject and
first recipient.

With --json, print each dead letter as it is stored, one JSON object per
line: {"Request": <the request as published>, "Subject": <the NATS subject
it was published on>, "Result": <the final result>}.`,
		Example: `  jetmail dead list
  jetmail dead list --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.deadList(cmd.Context(), asJSON, s)
		},
	}
	cmd.Flags().SortFlags = false
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines instead of a table")
	f.register(cmd)
	return cmd
}

func newDeadReplayCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var all bool
	cmd := &cobra.Command{
		Use:   "replay {ID... | --all}",
		Short: "Publish dead letters again and remove them",
		Long: `Publish the stored request of each dead letter again, unchanged, on the
subject it was first published on, then remove the dead letter, and print
"replayed <Id>" for each.

The replayed request keeps its Id, so it is the same message: its result
events continue on mail.result.<Id> (after the old failed one), with Attempt
counting from 1 again and a new retry period. It carries a new Nats-Msg-Id
(<Id>.replay.<unique>), so that the request stream's duplicate window does
not drop it. A request published without an Id key (its Id came from the
Nats-Msg-Id header or was generated) gets its Id added as the Id key.

An Id already sent (its latest result is 200, from another publish) is not
replayed: workers would not send it again anyway. Its dead letter is removed
and "skipped <Id>: already sent" printed.

Exit status 1 when an Id has no dead letter or a replay failed; the others
are replayed all the same.`,
		Example: `  jetmail dead replay order-1234-confirmation order-1235-confirmation
  jetmail dead replay --all`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && len(args) > 0:
				return badFlags("give Ids or --all, not both")
			case !all && len(args) == 0:
				return badFlags("%s wants the Ids to replay, or --all", cmd.CommandPath())
			}
			for _, id := range args {
				if !schema.ValidID(id) {
					return badFlags("%q is not a valid Id: want [A-Za-z0-9_-]{1,128}", id)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.deadReplay(cmd.Context(), args, all, s)
		},
	}
	cmd.Flags().SortFlags = false
	cmd.Flags().BoolVar(&all, "all", false, "replay every dead letter")
	f.register(cmd)
	return cmd
}

// deadLetter is one dead letter and where it is stored.
type deadLetter struct {
	schema.DeadLetter
	seq  uint64 // stream sequence
	data []byte // as stored
}

// id is the Id of the dead letter's request.
func (d *deadLetter) id() string { return d.Result.Id }

// deadStream returns the dead-letter stream; a missing one is exit status 2
// (no worker ever ran against this server).
func (f *clientFlags) deadStream(ctx context.Context, c *client) (jetstream.Stream, error) {
	n := f.names()
	st, err := c.js.Stream(ctx, n.DeadStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, withCode(exitUsage, fmt.Errorf("no JetStream stream %s: is a worker running? (NATS at %s)", n.DeadStream, config.RedactURLs(f.natsURL)))
	}
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", n.DeadStream, err)
	}
	return st, nil
}

// eachDeadLetter calls fn with the last dead letter of every Id, oldest
// first, through an ordered consumer that is deleted at the end. A dead
// letter that does not decode is reported on errOut and skipped.
func (f *clientFlags) eachDeadLetter(ctx context.Context, c *client, errOut io.Writer, fn func(*deadLetter) error) error {
	n := f.names()
	st, err := f.deadStream(ctx, c)
	if err != nil {
		return err
	}
	info := st.CachedInfo()
	if info.State.Msgs == 0 {
		return nil
	}
	lastSeq := info.State.LastSeq
	cons, err := c.js.OrderedConsumer(ctx, n.DeadStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{n.DeadSubjects()},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("reading dead letters: %w", err)
	}
	defer func() {
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = c.js.DeleteConsumer(dctx, n.DeadStream, ci.Name)
		}
	}()
	if ci := cons.CachedInfo(); ci != nil && ci.NumPending == 0 {
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("reading dead letters: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return fmt.Errorf("reading dead letters: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("reading dead letters: %w", err)
		}
		d := &deadLetter{seq: md.Sequence.Stream, data: msg.Data()}
		if err := json.Unmarshal(d.data, &d.DeadLetter); err != nil {
			fmt.Fprintf(errOut, "jetmail: skipping dead letter %d on %s: %v\n", d.seq, msg.Subject(), err)
		} else {
			if d.Result.Id == "" {
				d.Result.Id = strings.TrimPrefix(msg.Subject(), n.DeadSubject(""))
			}
			if err := fn(d); err != nil {
				return err
			}
		}
		if md.Sequence.Stream >= lastSeq || md.NumPending == 0 {
			return nil
		}
	}
}

func (f *clientFlags) deadList(ctx context.Context, asJSON bool, s stdio) error {
	c, err := f.connect("dead list")
	if err != nil {
		return err
	}
	defer c.Close()
	tw := tabwriter.NewWriter(s.out, 0, 8, 2, ' ', 0)
	count := 0
	err = f.eachDeadLetter(ctx, c, s.errOut, func(d *deadLetter) error {
		count++
		if asJSON {
			var buf bytes.Buffer
			if err := json.Compact(&buf, d.data); err != nil {
				return err
			}
			buf.WriteByte('\n')
			_, err := s.out.Write(buf.Bytes())
			return err
		}
		if count == 1 {
			fmt.Fprintln(tw, "ID\tSTATUS\tERROR\tTIME\tSUBJECT\tTO")
		}
		subject, to := requestSummary(d.Request)
		when := ""
		if !d.Result.Time.IsZero() {
			when = d.Result.Time.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", d.id(), int(d.Result.Status),
			cell(d.Result.Error, 60), when, cell(subject, 40), cell(to, 40))
		return nil
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if count == 0 && !asJSON {
		fmt.Fprintln(s.errOut, "jetmail: no dead letters")
	}
	return nil
}

// requestSummary is the Subject and the recipients of a stored request,
// as "first@example.com +2".
func requestSummary(raw json.RawMessage) (subject, to string) {
	req, err := schema.Decode(raw)
	if err != nil || req == nil {
		return "", ""
	}
	rcpts := append(append(append([]string(nil), req.To...), req.CC...), req.Bcc...)
	if len(rcpts) > 0 {
		to = rcpts[0]
		if len(rcpts) > 1 {
			to += fmt.Sprintf(" +%d", len(rcpts)-1)
		}
	}
	return req.Subject, to
}

// cell makes s fit one table cell of at most n runes: one line, shortened
// with "…".
func cell(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func (f *clientFlags) deadReplay(ctx context.Context, ids []string, all bool, s stdio) error {
	c, err := f.connect("dead replay")
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := f.deadStream(ctx, c)
	if err != nil {
		return err
	}
	var letters []*deadLetter
	failed := 0
	if all {
		err := f.eachDeadLetter(ctx, c, s.errOut, func(d *deadLetter) error {
			letters = append(letters, d)
			return nil
		})
		if err != nil {
			return err
		}
		if len(letters) == 0 {
			fmt.Fprintln(s.errOut, "jetmail: no dead letters")
		}
	} else {
		for _, id := range ids {
			m, err := st.GetLastMsgForSubject(ctx, f.names().DeadSubject(id))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				fmt.Fprintf(s.errOut, "jetmail: no dead letter for %s\n", id)
				failed++
				continue
			}
			if err != nil {
				return fmt.Errorf("dead letter of %s: %w", id, err)
			}
			d := &deadLetter{seq: m.Sequence, data: m.Data}
			if err := json.Unmarshal(m.Data, &d.DeadLetter); err != nil {
				fmt.Fprintf(s.errOut, "jetmail: dead letter of %s does not decode: %v\n", id, err)
				failed++
				continue
			}
			d.Result.Id = id
			letters = append(letters, d)
		}
	}
	for _, d := range letters {
		line, err := f.replayOne(ctx, c, st, d)
		if err != nil {
			fmt.Fprintf(s.errOut, "jetmail: %s: %v\n", d.id(), err)
			failed++
			if errors.Is(err, producer.ErrNoStream) {
				return withCode(exitUsage, err) // nothing else will work either
			}
			continue
		}
		fmt.Fprintln(s.out, line)
	}
	if failed > 0 {
		return silentExit(exitFailed)
	}
	return nil
}

// replayOne publishes the request of d again and removes d. It returns the
// line to print.
func (f *clientFlags) replayOne(ctx context.Context, c *client, st jetstream.Stream, d *deadLetter) (string, error) {
	id := d.id()
	n := f.names()
	if len(d.Request) == 0 || !json.Valid(d.Request) {
		return "", errors.New("the dead letter holds no JSON request to replay")
	}
	remove := func() error {
		// Only what was read: a dead letter stored since (the replay
		// failing again) stays.
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(n.DeadSubject(id)), jetstream.WithPurgeSequence(d.seq+1)); err != nil {
			return fmt.Errorf("removing the dead letter: %w", err)
		}
		return nil
	}
	last, err := c.p.Status(ctx, id)
	if err == nil && last.State == schema.StateSent {
		if err := remove(); err != nil {
			return "", err
		}
		return fmt.Sprintf("skipped %s: already sent", id), nil
	}
	body, err := withID(d.Request, id)
	if err != nil {
		return "", err
	}
	subject := d.Subject
	if subject != n.SendSubject() && !strings.HasPrefix(subject, n.SendSubject()+".") {
		subject = n.SendSubject()
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id+".replay."+nuid.Next())
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(pctx, msg); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			return "", f.clientError(fmt.Errorf("%w for %s: is a worker running?", producer.ErrNoStream, subject))
		}
		return "", fmt.Errorf("publishing on %s: %w", subject, err)
	}
	if err := remove(); err != nil {
		return "", fmt.Errorf("replayed, but %w; replaying it again will not send it twice", err)
	}
	return "replayed " + id, nil
}

// withID returns the request payload raw with its Id key set to id when it
// has none, and raw itself otherwise.
func withID(raw json.RawMessage, id string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("the stored request is not a JSON object: %w", err)
	}
	empty := false
	for k, v := range obj {
		if !strings.EqualFold(k, "Id") {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil && s != "" {
			return raw, nil // the body names its Id: keep it as it is
		}
		empty = true
	}
	if empty {
		// "Id": "" or null: rewrite the object without it.
		for k := range obj {
			if strings.EqualFold(k, "Id") {
				delete(obj, k)
			}
		}
		obj["Id"], _ = json.Marshal(id)
		return json.Marshal(obj)
	}
	// Insert the key after the opening brace, keeping the rest byte for
	// byte.
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	key, _ := json.Marshal(id)
	out := append([]byte(`{"Id":`), key...)
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, trimmed[1:]...), nil
}
