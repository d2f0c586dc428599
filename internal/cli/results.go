package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
)

func newResultsCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var follow bool
	cmd := &cobra.Command{
		Use:   "results",
		Short: "Print result events as JSON lines",
		Long: `Print the result events of all messages, oldest first, one JSON object per
line: every state change (accepted, deferred, sent, failed) of every message
still in the result stream.

With --follow, keep printing new events as they happen until interrupted
(Ctrl-C).`,
		Example: `  jetmail results
  jetmail results --follow
  jetmail results | jq -c 'select(.State == "failed")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.results(cmd.Context(), follow, s)
		},
	}
	cmd.Flags().SortFlags = false
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted")
	f.register(cmd)
	return cmd
}

func (f *clientFlags) results(ctx context.Context, follow bool, s stdio) error {
	c, err := f.connect("results")
	if err != nil {
		return err
	}
	defer c.Close()
	enc := json.NewEncoder(s.out)
	enc.SetEscapeHTML(false)
	// An error followed by more events was about one event (it did not
	// decode): report it and go on. The last error ends the sequence.
	var pending error
	for res, err := range c.p.Results(ctx, follow) {
		if pending != nil {
			fmt.Fprintf(s.errOut, "jetmail: skipping an event: %v\n", pending)
			pending = nil
		}
		if err != nil {
			pending = err
			continue
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	if pending != nil && !(errors.Is(pending, context.Canceled) && ctx.Err() != nil) {
		return f.clientError(pending)
	}
	return nil
}
