package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

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
those published later, and prints how many were cancelled and how many were
too late; exit status 0.`,
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
		res, err := c.p.CancelBatch(ctx, batch)
		if err != nil {
			return f.clientError(err)
		}
		fmt.Fprintf(s.out, "batch %s: %d cancelled, %d too late\n", batch, res.Cancelled, res.TooLate)
		return nil
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
