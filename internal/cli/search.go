package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/httpapi"
	"github.com/jetmail/jetmail/schema"
)

// defaultAPIURL is where the commands that use the HTTP API look for it:
// a worker or gateway on its default --http-addr.
const defaultAPIURL = "http://127.0.0.1:8080"

// searchPageSize is the number of messages search asks for per page.
const searchPageSize = 200

// searchFlags are the flags of `jetmail search`.
type searchFlags struct {
	apiURL    string
	token     string
	tokenFile string
	recipient string
	subject   string
	state     string
	lane      string
	batch     string
	since     string
	until     string
	limit     int
	asJSON    bool
	timeout   time.Duration
}

const searchLong = `Find messages by recipient, subject, state, lane, batch and time, through
the HTTP API of a worker or gateway (GET /v1/messages, which reads its
search index of the result stream).

It prints the latest event of each matching message, newest first (by the
time of its first event), as a table with the message's subject and
recipients (from its accepted event), or with --json as JSON lines, one
result event per line as stored. It follows the pages of the answer until
--limit messages are printed (0: all of them).

--recipient matches an address exactly, in any case, among To, CC and Bcc;
--subject matches a part of the subject, in any case. --since and --until
take an RFC 3339 time (2026-05-04T12:00:00Z) or a duration before now (24h,
90m). Filters combine: every one given must match. Messages are found as
long as the result stream keeps their events (7 days by default).`

func newSearchCmd(s stdio) *cobra.Command {
	f := &searchFlags{}
	cmd := &cobra.Command{
		Use:   "search",
		Short: "Find messages by recipient, subject, state, lane, batch and time",
		Long:  searchLong,
		Example: `  jetmail search --recipient jan@example.com
  jetmail search --subject invoice --state failed --since 24h
  jetmail search --batch spring-sale --state deferred --limit 0 --json | jq -r .Id
  jetmail search --api-url https://mail-api.example.com --api-token-file /run/secrets/api-token --lane urgent`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), cmd.Flags(), s)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&f.recipient, "recipient", "", "an address among the recipients (To, CC, Bcc), in any case")
	fs.StringVar(&f.subject, "subject", "", "text the subject contains, in any case")
	fs.StringVar(&f.state, "state", "", "state of the latest event: scheduled, accepted, deferred, sent, failed or cancelled")
	fs.StringVar(&f.lane, "lane", "", "lane: urgent, normal or bulk")
	fs.StringVar(&f.batch, "batch", "", "BatchId")
	fs.StringVar(&f.since, "since", "", "first event at or after this time: RFC 3339, or a duration before now such as 24h")
	fs.StringVar(&f.until, "until", "", "first event before this time: RFC 3339, or a duration before now")
	fs.IntVar(&f.limit, "limit", 50, "most messages to print; 0 for all")
	fs.BoolVar(&f.asJSON, "json", false, "print the result events as JSON lines instead of a table")
	addAPIClientFlags(fs, &f.apiURL, &f.token, &f.tokenFile)
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "how long each HTTP request may take")
	return cmd
}

// addAPIClientFlags registers the flags of a command that calls the HTTP
// API: where it is and the bearer token.
func addAPIClientFlags(fs *pflag.FlagSet, apiURL, token, tokenFile *string) {
	fs.StringVar(apiURL, "api-url", defaultAPIURL, "base URL of the HTTP API of a worker or gateway")
	fs.StringVar(token, "api-token", "", "bearer token to call the HTTP API with. Prefer --api-token-file")
	fs.StringVar(tokenFile, "api-token-file", "", "file holding the bearer token (its first line that is not a comment)")
}

// apiToken is the token of --api-token or --api-token-file, or "" for none.
func apiToken(token, file string) (string, error) {
	if token != "" && file != "" {
		return "", badFlags("give --api-token or --api-token-file, not both")
	}
	if file == "" {
		return token, nil
	}
	list, err := (&apiTokenFlags{tokenFile: file}).list()
	if err != nil {
		return "", err
	}
	return list[0], nil
}

// sinceFlag parses --since or --until: an RFC 3339 time, or a duration
// before now.
func sinceFlag(name, v string, now time.Time) (string, error) {
	if v == "" {
		return "", nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.Format(time.RFC3339Nano), nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d).UTC().Format(time.RFC3339Nano), nil
	}
	return "", badFlags("--%s %q: want an RFC 3339 time such as 2026-05-04T12:00:00Z, or a duration before now such as 24h", name, v)
}

func (f *searchFlags) run(ctx context.Context, fs *pflag.FlagSet, s stdio) error {
	base, err := url.Parse(strings.TrimRight(f.apiURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return badFlags("--api-url %q: want an http:// or https:// URL", f.apiURL)
	}
	if f.limit < 0 {
		return badFlags("--limit must not be negative, got %d", f.limit)
	}
	token, err := apiToken(f.token, f.tokenFile)
	if err != nil {
		return err
	}
	params := url.Values{}
	for name, v := range map[string]string{"recipient": f.recipient, "subject": f.subject, "state": f.state, "lane": f.lane, "batch": f.batch} {
		if v != "" {
			params.Set(name, v)
		}
	}
	now := time.Now()
	for _, t := range []struct{ name, v string }{{"since", f.since}, {"until", f.until}} {
		v, err := sinceFlag(t.name, t.v, now)
		if err != nil {
			return err
		}
		if v != "" {
			params.Set(t.name, v)
		}
	}

	client := &http.Client{Timeout: f.timeout}
	tw := tabwriter.NewWriter(s.out, 0, 8, 2, ' ', 0)
	printed := 0
	for {
		size := searchPageSize
		if f.limit > 0 {
			size = min(size, f.limit-printed)
		}
		params.Set("limit", strconv.Itoa(size))
		page, err := f.fetch(ctx, client, base, params, token)
		if err != nil {
			return err
		}
		for _, raw := range page.Messages {
			if err := f.print(s.out, tw, printed == 0, raw, page.Envelopes); err != nil {
				return err
			}
			printed++
		}
		if page.Next == "" || (f.limit > 0 && printed >= f.limit) {
			break
		}
		params.Set("cursor", page.Next)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if printed == 0 && !f.asJSON {
		fmt.Fprintln(s.errOut, "jetmail: no messages match")
	}
	return nil
}

// fetch gets one page of GET /v1/messages. A refused parameter or token
// is exit status 2, as is an API that can not be reached.
func (f *searchFlags) fetch(ctx context.Context, client *http.Client, base *url.URL, params url.Values, token string) (*httpapi.SearchPage, error) {
	u := *base
	u.Path += "/v1/messages"
	u.RawQuery = params.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	req.Header.Set("Accept", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, withCode(exitUsage, fmt.Errorf("cannot reach the HTTP API at %s: %w (is `jetmail worker` or `jetmail gateway` serving it? see --api-url)", base.Redacted(), err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer of %s: %w", base.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		var ans httpapi.Response
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &ans) == nil && ans.Error != "" {
			msg = ans.Error
		}
		err := fmt.Errorf("search at %s: %s: %s", base.Redacted(), resp.Status, msg)
		switch resp.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized:
			return nil, withCode(exitUsage, err)
		case http.StatusNotFound:
			return nil, withCode(exitUsage, fmt.Errorf("%w (does %s serve jetmail's HTTP API?)", err, base.Redacted()))
		}
		return nil, withCode(exitFailed, err)
	}
	var page httpapi.SearchPage
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("search at %s: the answer is not a page of messages: %w", base.Redacted(), err)
	}
	return &page, nil
}

// print prints one message: its event as a JSON line, or a table row.
func (f *searchFlags) print(out io.Writer, tw *tabwriter.Writer, first bool, raw json.RawMessage, envelopes map[string]json.RawMessage) error {
	if f.asJSON {
		_, err := out.Write(append(append([]byte(nil), raw...), '\n'))
		return err
	}
	var ev schema.Result
	if err := json.Unmarshal(raw, &ev); err != nil {
		return fmt.Errorf("a message of the answer is not a result event: %w", err)
	}
	var env schema.Envelope
	if e, ok := envelopes[ev.Id]; ok {
		if err := json.Unmarshal(e, &env); err != nil {
			return fmt.Errorf("the envelope of %s in the answer: %w", ev.Id, err)
		}
	}
	if first {
		fmt.Fprintln(tw, "ID\tSTATE\tSTATUS\tLANE\tTIME\tSUBJECT\tTO")
	}
	to := ""
	if len(env.Recipients) > 0 {
		to = env.Recipients[0]
		if len(env.Recipients) > 1 {
			to += fmt.Sprintf(" +%d", len(env.Recipients)-1)
		}
	}
	when := ""
	if !ev.Time.IsZero() {
		when = ev.Time.UTC().Format(time.RFC3339)
	}
	_, err := fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", ev.Id, ev.State, int(ev.Status), cell(string(ev.Lane), 8),
		cell(when, 20), cell(env.Subject, 40), cell(to, 40))
	return err
}
