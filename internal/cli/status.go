package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

func newStatusCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Print the latest result of a message",
		Long: `Print the latest result event of the message with the given Id, which is
its status (accepted, deferred, sent or failed), as JSON.

Exit status 1 when the Id has no result: it was never published, no worker
has taken it yet, or its events have expired from the result stream (after 7
days by default).`,
		Example: `  jetmail status 8F3kQ2x0Lr9e1b
  jetmail status --nats-url nats://nats:4222 order-1234-confirmation`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badFlags("%s wants one Id, got %d arguments", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.status(cmd.Context(), args[0], s)
		},
	}
	cmd.Flags().SortFlags = false
	f.register(cmd)
	return cmd
}

func (f *clientFlags) status(ctx context.Context, id string, s stdio) error {
	if !schema.ValidID(id) {
		return badFlags("%q is not a valid Id: want [A-Za-z0-9_-]{1,128}", id)
	}
	c, err := f.connect("status")
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.p.Status(ctx, id)
	switch {
	case errors.Is(err, producer.ErrNotFound):
		return withCode(exitFailed, fmt.Errorf("no result for %s: unknown Id, not taken by a worker yet, or expired", id))
	case err != nil:
		return f.clientError(err)
	}
	return printJSON(s.out, res)
}
