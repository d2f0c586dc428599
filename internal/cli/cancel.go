package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

func newCancelCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var batch string
	cmd := &cobra.Command{
		Use:   "cancel {ID... | --batch B}",
		Short: "Cancel messages that are not sent yet",
		Long: `Cancel messages that are scheduled, waiting in the queue, or deferred between
retries (contract §8): each gets one final event, 410 cancelled, and is never
sent afterwards by any worker. One whose SMTP transaction has begun, or that
is already final, is too late.

For each Id it prints one line: "<Id> cancelled", "<Id> too late (sent)"
(or failed), "<Id> too late (sending)" or "<Id> unknown". A message a worker
may be about to send is waited for, up to the SMTP timeout (30 s). Exit status
0 when every named message is now cancelled, else 1.

With --batch it cancels every message of the batch not yet sent, including
those published later (the batch stays marked cancelled), and prints the
same line for each message of the batch found now, in Id order, and a
summary on standard error. Exit status 0 when every one of them is now
cancelled (or the batch has no message yet), else 1.`,
		Example: `  jetmail cancel order-1234-confirmation
  jetmail cancel --batch newsletter-2026-12`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case batch != "" && len(args) > 0:
				return badFlags("give Ids or --batch, not both")
			case batch == "" && len(args) == 0:
				return badFlags("%s wants the Ids to cancel, or --batch", cmd.CommandPath())
			case batch != "" && !schema.ValidID(batch):
				return badFlags("--batch %q is not a valid BatchId: want [A-Za-z0-9_-]{1,128}", batch)
			}
			for _, id := range args {
				if !schema.ValidID(id) {
					return badFlags("%q is not a valid Id: want [A-Za-z0-9_-]{1,128}", id)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.cancel(cmd.Context(), args, batch, s)
		},
	}
	cmd.Flags().StringVar(&batch, "batch", "", "cancel every message of this BatchId")
	f.register(cmd)
	return cmd
}

func (f *clientFlags) cancel(ctx context.Context, ids []string, batch string, s stdio) error {
	c, err := f.connect("cancel")
	if err != nil {
		return err
	}
	defer c.Close()
	if batch != "" {
		return f.cancelBatch(ctx, c.p, batch, s)
	}
	all := true
	for _, id := range ids {
		res, err := c.p.Cancel(ctx, id)
		if err != nil {
			return f.clientError(err)
		}
		fmt.Fprintf(s.out, "%s %s\n", id, res)
		all = all && (res.Outcome == producer.Cancelled || res.Outcome == producer.AlreadyCancelled)
	}
	if !all {
		return silentExit(exitFailed)
	}
	return nil
}

// cancelBatch is `jetmail cancel --batch B`: it cancels the batch and
// prints one line per message of it, as cancel does per Id. A message that
// CancelBatch found held by a worker is cancelled once more by its Id,
// which waits for that worker as `jetmail cancel ID` does: the worker sees
// the batch's mark before it begins SMTP, so the message may well end
// cancelled rather than too late. Up to 16 such waits run at once.
func (f *clientFlags) cancelBatch(ctx context.Context, p *producer.Producer, batch string, s stdio) error {
	res, err := p.CancelBatch(ctx, batch)
	if err != nil {
		return f.clientError(err)
	}
	if len(res.Messages) == 0 {
		fmt.Fprintf(s.errOut, "jetmail: batch %s has no messages; any published later will be cancelled\n", batch)
		return nil
	}
	// The held ones are asked again together, so that a batch whose
	// worker died holding many does not wait for each in turn.
	outcomes := make([]producer.CancelResult, len(res.Messages))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, m := range res.Messages {
		outcomes[i] = m.Result
		if m.Result.Outcome == producer.TooLateSending {
			g.Go(func() error {
				r, err := p.Cancel(gctx, m.Id)
				outcomes[i] = r
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		return f.clientError(err)
	}
	cancelled, tooLate := 0, 0
	for i, m := range res.Messages {
		r := outcomes[i]
		fmt.Fprintf(s.out, "%s %s\n", m.Id, r)
		if r.Outcome == producer.Cancelled || r.Outcome == producer.AlreadyCancelled {
			cancelled++
		} else {
			tooLate++
		}
	}
	fmt.Fprintf(s.errOut, "jetmail: batch %s: %d cancelled, %d too late\n", batch, cancelled, tooLate)
	if tooLate > 0 {
		return silentExit(exitFailed)
	}
	return nil
}
