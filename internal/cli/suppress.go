package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

const suppressLong = `The suppression list holds the addresses that mail is no longer sent to,
and @domain entries, which match a domain and every subdomain of it
(@example.com matches jan@example.com and jan@mail.example.com). It lives
in the JetStream KV bucket JETMAIL_SUPPRESSIONS. Each entry has a reason:

  bounce       refused permanently as unknown; applies to every message and
               expires (after 30 days by default); workers add these
  unsubscribe  one-click unsubscribes (or added so); applies to the bulk lane
               and to messages that carry Unsubscribe
  manual       added by an operator; applies to every message

An address keeps its strongest entry: manual beats unsubscribe beats
bounce. Workers skip suppressed recipients before each attempt, unless the
request says IgnoreSuppression.

  jetmail suppress list                the entries (or --json)
  jetmail suppress add ADDR...         add (--reason, --file to import a list)
  jetmail suppress remove ADDR...      take entries off the list
  jetmail suppress check ADDR          exit 0 when ADDR is suppressed, 1 when not`

func newSuppressCmd(s stdio) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "suppress",
		Short: "List, add, remove and check suppressed addresses",
		Long:  suppressLong,
		Example: `  jetmail suppress add jan@example.com @spam.example
  jetmail suppress add --file bounces.txt --reason bounce
  jetmail suppress check jan@example.com && echo suppressed
  jetmail suppress list --json | jq -r 'select(.Reason == "bounce") | .Address'
  jetmail suppress remove jan@example.com`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return badFlags("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newSuppressListCmd(s), newSuppressAddCmd(s), newSuppressRemoveCmd(s), newSuppressCheckCmd(s))
	return cmd
}

// openSuppressions connects as the command name and opens the list,
// creating its bucket when no worker has yet.
func (f *clientFlags) openSuppressions(ctx context.Context, name string) (*client, *suppress.Store, error) {
	c, err := f.connect(name)
	if err != nil {
		return nil, nil, err
	}
	store, err := suppress.Open(ctx, c.js, f.names(), suppress.Options{})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, store, nil
}

// canonicalArgs checks every address argument before anything is done.
func canonicalArgs(args []string) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		c, err := suppress.Canonical(a)
		if err != nil {
			return nil, badFlags("%q is not a valid email address or @domain", a)
		}
		out[i] = c
	}
	return out, nil
}

func newSuppressListCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the suppressed addresses",
		Long: `List the entries of the suppression list, by address (@domain entries
first), as a table: ADDRESS, REASON, SINCE, EXPIRES (bounces only) and ID
(the message that caused it, if any). Expired bounces are left out.

With --json, print each entry as one JSON object per line, as the bucket
stores it: {"Address", "Reason", "Time", "Id", "Expires"} (the last two
only when set).`,
		Example: `  jetmail suppress list
  jetmail suppress list --json > suppressions.ndjson`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.suppressList(cmd.Context(), asJSON, s)
		},
	}
	cmd.Flags().SortFlags = false
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON lines instead of a table")
	f.register(cmd)
	return cmd
}

func (f *clientFlags) suppressList(ctx context.Context, asJSON bool, s stdio) error {
	c, store, err := f.openSuppressions(ctx, "suppress list")
	if err != nil {
		return err
	}
	defer c.Close()
	var entries []suppress.Entry
	for e, err := range store.List(ctx) {
		if errors.Is(err, suppress.ErrMalformed) {
			fmt.Fprintf(s.errOut, "jetmail: skipping %v\n", err)
			continue
		}
		if err != nil {
			return err
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b suppress.Entry) int { return cmp.Compare(a.Address, b.Address) })
	if asJSON {
		enc := json.NewEncoder(s.out)
		for _, e := range entries {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	if len(entries) == 0 {
		fmt.Fprintln(s.errOut, "jetmail: the suppression list is empty")
		return nil
	}
	tw := tabwriter.NewWriter(s.out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tREASON\tSINCE\tEXPIRES\tID")
	for _, e := range entries {
		expires := "-"
		if e.Expires != nil {
			expires = e.Expires.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Address, e.Reason, e.Time.UTC().Format(time.RFC3339), expires, cell(e.Id, 40))
	}
	return tw.Flush()
}

func newSuppressAddCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	var (
		reason, file, id string
		bounceTTL        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "add {ADDR... | --file FILE}",
		Short: "Add addresses or @domains to the suppression list",
		Long: `Add each address (any form: Jan <jan@example.com> is jan@example.com) or
@domain (the domain and its subdomains) with the reason given (manual by
default), and print what happened to it:

  added jan@example.com (manual)
  added jan@example.com (manual, replacing bounce)
  kept jan@example.com (unsubscribe since 2026-03-01T12:00:00Z): stronger than bounce
  kept jan@example.com (manual since 2026-03-01T12:00:00Z): already suppressed

An address keeps its strongest entry (manual beats unsubscribe beats
bounce); to weaken one, remove it first. A bounce expires after
--bounce-ttl.

--file imports a list, one address a line (- for standard input): blank
lines and lines beginning with # are skipped, and from a CSV or TSV line
(an export of another service's list) the first field is taken. Bad lines
are reported on standard error with their numbers, and the others are
added all the same; the exit status is then 1.`,
		Example: `  jetmail suppress add jan@example.com "Ola <ola@example.com>"
  jetmail suppress add @competitor.example --reason manual
  jetmail suppress add --file unsubscribes.csv --reason unsubscribe
  grep -v '^$' bounces.txt | jetmail suppress add --file - --reason bounce`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && file == "" {
				return badFlags("%s wants the addresses to add, or --file", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := suppress.ParseReason(reason)
			if err != nil {
				return badFlags("--reason: want bounce, unsubscribe or manual, got %q", reason)
			}
			addrs, err := canonicalArgs(args)
			if err != nil {
				return err
			}
			if bounceTTL <= 0 {
				return badFlags("--bounce-ttl must be positive, got %s", bounceTTL)
			}
			if id != "" && !schema.ValidID(id) {
				return badFlags("--id %q is not a valid Id: want [A-Za-z0-9_-]{1,128}", id)
			}
			return f.suppressAdd(cmd.Context(), addrs, r, file, id, bounceTTL, s)
		},
	}
	cmd.Flags().SortFlags = false
	cmd.Flags().StringVar(&reason, "reason", string(suppress.Manual), "bounce, unsubscribe or manual")
	cmd.Flags().StringVar(&file, "file", "", "import the addresses of FILE, one a line (- for standard input)")
	cmd.Flags().StringVar(&id, "id", "", "the Id of the message that caused the entries, if any")
	cmd.Flags().DurationVar(&bounceTTL, "bounce-ttl", suppress.DefaultBounceTTL, "how long a bounce entry applies")
	f.register(cmd)
	return cmd
}

func (f *clientFlags) suppressAdd(ctx context.Context, addrs []string, r suppress.Reason, file, id string, ttl time.Duration, s stdio) error {
	c, store, err := f.openSuppressions(ctx, "suppress add")
	if err != nil {
		return err
	}
	defer c.Close()
	failed := false
	for _, a := range addrs {
		ch, err := store.Add(ctx, suppress.Entry{Address: a, Reason: r, Id: id}, ttl)
		if err != nil {
			return err
		}
		switch e := ch.Entry; {
		case !ch.Stored && e.Reason == r:
			fmt.Fprintf(s.out, "kept %s (%s since %s): already suppressed\n", e.Address, e.Reason, e.Time.UTC().Format(time.RFC3339))
		case !ch.Stored:
			fmt.Fprintf(s.out, "kept %s (%s since %s): stronger than %s\n", e.Address, e.Reason, e.Time.UTC().Format(time.RFC3339), r)
		case ch.Previous != nil && ch.Previous.Reason != r:
			fmt.Fprintf(s.out, "added %s (%s, replacing %s)\n", e.Address, e.Reason, ch.Previous.Reason)
		default:
			fmt.Fprintf(s.out, "added %s (%s)\n", e.Address, e.Reason)
		}
	}
	if file != "" {
		var in io.Reader = s.in
		name := "standard input"
		if file != "-" {
			fh, err := os.Open(file)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("--file: %w", err))
			}
			defer fh.Close()
			in, name = fh, file
		}
		added, bad, err := store.Import(ctx, in, r)
		for _, le := range bad {
			fmt.Fprintf(s.errOut, "jetmail: %s:%d: %v\n", name, le.Line, le.Err)
		}
		if err != nil {
			return err
		}
		noun := "entries"
		if added == 1 {
			noun = "entry"
		}
		fmt.Fprintf(s.out, "imported %d %s from %s (%s)", added, noun, name, r)
		if len(bad) > 0 {
			fmt.Fprintf(s.out, "; %d bad lines", len(bad))
			failed = true
		}
		fmt.Fprintln(s.out)
	}
	if failed {
		return silentExit(exitFailed)
	}
	return nil
}

func newSuppressRemoveCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "remove ADDR...",
		Short: "Take addresses or @domains off the suppression list",
		Long: `Remove the entry of each address or @domain given, and print
"removed <address> (<reason>)". Only the entry of exactly that address or
domain is removed: removing jan@example.com leaves @example.com.

Exit status 1 when an address has no entry; the others are removed all the
same.`,
		Example: `  jetmail suppress remove jan@example.com
  jetmail suppress remove @example.org`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return badFlags("%s wants the addresses to remove", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			addrs, err := canonicalArgs(args)
			if err != nil {
				return err
			}
			return f.suppressRemove(cmd.Context(), addrs, s)
		},
	}
	cmd.Flags().SortFlags = false
	f.register(cmd)
	return cmd
}

func (f *clientFlags) suppressRemove(ctx context.Context, addrs []string, s stdio) error {
	c, store, err := f.openSuppressions(ctx, "suppress remove")
	if err != nil {
		return err
	}
	defer c.Close()
	missing := false
	for _, a := range addrs {
		e, err := store.Remove(ctx, a)
		switch {
		case errors.Is(err, suppress.ErrNotFound):
			fmt.Fprintf(s.errOut, "jetmail: %s is not on the suppression list\n", a)
			missing = true
		case err != nil:
			return err
		default:
			fmt.Fprintf(s.out, "removed %s (%s)\n", e.Address, e.Reason)
		}
	}
	if missing {
		return silentExit(exitFailed)
	}
	return nil
}

func newSuppressCheckCmd(s stdio) *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "check ADDR",
		Short: "Exit 0 when an address is suppressed, 1 when not",
		Long: `Look up the address: its own entry, else that of its domain or of the
nearest parent domain with one. Print the entry that suppresses it, and
where it applies, and exit 0; or print that it is not suppressed and exit 1.

  jan@example.com is suppressed: unsubscribe since 2026-03-01T12:00:00Z (the bulk lane and messages with Unsubscribe)
  ola@mail.example.com is suppressed by @example.com: manual since 2026-03-01T12:00:00Z (every message)
  jo@example.net is not suppressed`,
		Example: `  jetmail suppress check jan@example.com
  if jetmail suppress check "$addr" >/dev/null; then echo "skip $addr"; fi`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badFlags("%s wants one address, got %d arguments", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			addrs, err := canonicalArgs(args)
			if err != nil {
				return err
			}
			return f.suppressCheck(cmd.Context(), addrs[0], s)
		},
	}
	cmd.Flags().SortFlags = false
	f.register(cmd)
	return cmd
}

func (f *clientFlags) suppressCheck(ctx context.Context, addr string, s stdio) error {
	c, store, err := f.openSuppressions(ctx, "suppress check")
	if err != nil {
		return err
	}
	defer c.Close()
	e, err := store.Match(ctx, addr)
	if errors.Is(err, suppress.ErrNotFound) {
		fmt.Fprintf(s.out, "%s is not suppressed\n", addr)
		return silentExit(exitFailed)
	}
	if err != nil {
		return err
	}
	by := ""
	if e.Address != addr {
		by = " by " + e.Address
	}
	scope := "every message"
	if e.Reason == suppress.Unsubscribe {
		scope = "the bulk lane and messages with Unsubscribe"
	}
	until := ""
	if e.Expires != nil {
		until = " until " + e.Expires.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(s.out, "%s is suppressed%s: %s since %s%s (%s)\n", addr, by, e.Reason, e.Time.UTC().Format(time.RFC3339), until, scope)
	return nil
}
