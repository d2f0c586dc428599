package cli

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/webhook"
)

// webhookFlags are --webhook, --webhook-secret-file and --webhooks, of the
// worker and of `jetmail webhooks test`.
type webhookFlags struct {
	url, secretFile, file string
}

func (w *webhookFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&w.url, "webhook", "", "URL to POST every result event to, signed (Standard Webhooks); named \"default\"")
	fs.StringVar(&w.secretFile, "webhook-secret-file", "", "file of --webhook's signing key: whsec_ and base64 of at least 24 bytes")
	fs.StringVar(&w.file, "webhooks", "", "YAML file of named webhooks (url, secret_file, states)")
}

// hooks returns the configured webhooks; none when no flag is set.
func (w *webhookFlags) hooks() ([]webhook.Config, error) {
	switch {
	case w.url != "" && w.file != "":
		return nil, badFlags("--webhook and --webhooks can not be used together: put the first in the file")
	case w.url == "" && w.secretFile != "":
		return nil, badFlags("--webhook-secret-file goes with --webhook")
	case w.url != "":
		c, err := webhook.FromFlags(w.url, w.secretFile)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("--webhook: %w", err))
		}
		return []webhook.Config{c}, nil
	case w.file != "":
		hooks, err := webhook.LoadFile(w.file)
		if err != nil {
			return nil, withCode(exitUsage, fmt.Errorf("--webhooks: %w", err))
		}
		return hooks, nil
	}
	return nil, nil
}

func newWebhooksCmd(s stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "webhooks",
		Short: "Check the webhooks that result events are POSTed to",
		Long: `Webhooks receive every result event, POSTed with Standard Webhooks
signatures (contract §10), from the workers configured with --webhook or
--webhooks.

  jetmail webhooks test NAME   POST a signed test event and print the answer`,
		Example: `  jetmail webhooks test crm --webhooks /etc/jetmail/webhooks.yaml
  jetmail webhooks test default --webhook https://crm.example.com/hooks/mail --webhook-secret-file hook.key`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return badFlags("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var f webhookFlags
	test := &cobra.Command{
		Use:   "test NAME",
		Short: "POST a signed test event to a webhook and print its answer",
		Long: `POST a signed test event ({"Id":"test-…","State":"test","Time":…}) to the
webhook NAME of --webhooks (or "default" for --webhook) and print the HTTP
status and the start of the answer's body. Exit status 0 for a 2xx answer,
1 otherwise.`,
		Example: `  jetmail webhooks test crm --webhooks webhooks.yaml`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badFlags("%s wants the webhook's name", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			hooks, err := f.hooks()
			if err != nil {
				return err
			}
			i := slices.IndexFunc(hooks, func(h webhook.Config) bool { return h.Name == args[0] })
			if i < 0 {
				var names []string
				for _, h := range hooks {
					names = append(names, h.Name)
				}
				return badFlags("no webhook %q configured (have: %s)", args[0], strings.Join(names, ", "))
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			status, body, err := webhook.Test(ctx, hooks[i], nil)
			if err != nil {
				return fmt.Errorf("webhook %s: %w", args[0], err)
			}
			fmt.Fprintf(s.out, "%d %s\n", status, http.StatusText(status))
			if len(body) > 0 {
				fmt.Fprintf(s.out, "%s\n", body)
			}
			if status < 200 || status > 299 {
				return silentExit(exitFailed)
			}
			return nil
		},
	}
	f.addFlags(test.Flags())
	cmd.AddCommand(test)
	return cmd
}
