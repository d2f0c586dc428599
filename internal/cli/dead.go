package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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

func (f *clientFlags) deadList(ctx context.Context, asJSON bool, s stdio) error {
	c, err := f.connect("dead list")
	if err != nil {
		return err
	}
	defer c.Close()
	tw := tabwriter.NewWriter(s.out, 0, 8, 2, ' ', 0)
	count := 0
	for d, err := range c.p.DeadLetters(ctx) {
		if errors.Is(err, producer.ErrMalformed) {
			fmt.Fprintf(s.errOut, "jetmail: skipping %v\n", err)
			continue
		}
		if err != nil {
			return f.clientError(err)
		}
		count++
		if asJSON {
			var buf bytes.Buffer
			if err := json.Compact(&buf, d.Data); err != nil {
				return err
			}
			buf.WriteByte('\n')
			if _, err := s.out.Write(buf.Bytes()); err != nil {
				return err
			}
			continue
		}
		if count == 1 {
			fmt.Fprintln(tw, "ID\tSTATUS\tERROR\tTIME\tSUBJECT\tTO")
		}
		subject, to := requestSummary(d.Request)
		when := ""
		if !d.Result.Time.IsZero() {
			when = d.Result.Time.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", d.ID(), int(d.Result.Status),
			cell(d.Result.Error, 60), when, cell(subject, 40), cell(to, 40))
	}
	if err := tw.Flush(); err != nil {
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
	var letters []*producer.DeadLetter
	failed := 0
	if all {
		for d, err := range c.p.DeadLetters(ctx) {
			if errors.Is(err, producer.ErrMalformed) {
				fmt.Fprintf(s.errOut, "jetmail: skipping %v\n", err)
				failed++
				continue
			}
			if err != nil {
				return f.clientError(err)
			}
			letters = append(letters, d)
		}
		if len(letters) == 0 && failed == 0 {
			fmt.Fprintln(s.errOut, "jetmail: no dead letters")
		}
	} else {
		for _, id := range ids {
			d, err := c.p.DeadLetterOf(ctx, id)
			switch {
			case errors.Is(err, producer.ErrNoStream):
				return f.clientError(err)
			case errors.Is(err, producer.ErrNotFound):
				fmt.Fprintf(s.errOut, "jetmail: no dead letter for %s\n", id)
				failed++
				continue
			case err != nil:
				fmt.Fprintf(s.errOut, "jetmail: %s: %v\n", id, err)
				failed++
				continue
			}
			letters = append(letters, d)
		}
	}
	for _, d := range letters {
		outcome, err := c.p.Replay(ctx, d)
		switch {
		case errors.Is(err, producer.ErrNoStream):
			fmt.Fprintf(s.errOut, "jetmail: %s: %v\n", d.ID(), err)
			return f.clientError(err) // nothing else will work either
		case err != nil:
			fmt.Fprintf(s.errOut, "jetmail: %s: %v\n", d.ID(), err)
			failed++
		case outcome == producer.AlreadySent:
			fmt.Fprintf(s.out, "skipped %s: already sent\n", d.ID())
		default:
			fmt.Fprintf(s.out, "replayed %s\n", d.ID())
		}
	}
	if failed > 0 {
		return silentExit(exitFailed)
	}
	return nil
}
