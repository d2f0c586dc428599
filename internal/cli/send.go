package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/tracing"
)

// sendFlags are the flags of `jetmail send`.
type sendFlags struct {
	clientFlags

	to, cc, bcc, replyTo  []string
	from, subject, body   string
	text, importance      string
	connection, id        string
	priority, at, batchID string
	unsubscribe           string
	html                  bool
	attach, inline        []string
	headers, metadata     []string

	file    string
	batch   string
	wait    bool
	timeout time.Duration
}

// messageFlags are the flags that build a request, which --file and
// --batch replace.
var messageFlags = []string{
	"to", "cc", "bcc", "from", "subject", "body", "html", "text", "attach", "inline",
	"importance", "reply-to", "header", "metadata", "connection", "id", "at", "unsubscribe",
}

const sendLong = `Publish a send request and print its Id.

The request is built from the flags, or read as JSON from --file (a payload
written for the SMTP connector's Send Email action works unchanged, and is
published as it is). It is checked before it is published: an invalid
request is reported field by field and nothing is published (exit status 2).

The Id is printed on stdout as soon as JetStream has stored the request.
With --wait, send then waits for the final result (sent or failed), prints it
as JSON and exits 0 only if its Status is 200.

--batch publishes many requests from a file of JSON lines (NDJSON) as fast as
JetStream takes them and prints their Ids; with --wait it then waits for every
final result and prints the number of results per Status.

Recipient flags may be repeated or hold several addresses separated by ';'
or ','; an address may carry a display name: "Jan Kowalski <jan@example.com>".`

func newSendCmd(s stdio) *cobra.Command {
	f := &sendFlags{}
	cmd := &cobra.Command{
		Use:   "send",
		Short: "Publish an email send request, and optionally wait for its result",
		Long:  sendLong,
		Example: `  jetmail send --to you@example.com --from me@example.com --subject hi --body hello --wait
  jetmail send --to 'a@example.com;b@example.com' --from 'Shop <shop@example.com>' \
      --subject 'Your invoice' --html --body '<p>See the attachment.</p>' --attach invoice.pdf
  jetmail send --html --body '<img src="cid:logo">' --inline logo=logo.png --to you@example.com
  jetmail send --file request.json --wait
  echo '{"To":"you@example.com","Subject":"hi","Body":"hello"}' | jetmail send --file -
  jetmail send --batch requests.ndjson --wait --timeout 10m`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd.Context(), cmd.Flags(), s)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringArrayVar(&f.to, "to", nil, "recipient (repeatable, or ';'-separated)")
	fs.StringArrayVar(&f.cc, "cc", nil, "Cc recipient (repeatable, or ';'-separated)")
	fs.StringArrayVar(&f.bcc, "bcc", nil, "Bcc recipient, not shown in the headers (repeatable, or ';'-separated)")
	fs.StringVar(&f.from, "from", "", "sender; default: the connection's default sender (worker --smtp-from)")
	fs.StringVar(&f.subject, "subject", "", "subject")
	fs.StringVar(&f.body, "body", "", "body text, or HTML with --html")
	fs.BoolVar(&f.html, "html", false, "the body is HTML")
	fs.StringVar(&f.text, "text", "", "plain-text alternative of an HTML body; derived from the HTML when absent")
	fs.StringArrayVar(&f.attach, "attach", nil, "attach a file (repeatable)")
	fs.StringArrayVar(&f.inline, "inline", nil, "attach a file inline as CID=FILE, for <img src=\"cid:CID\"> in an HTML body (repeatable)")
	fs.StringVar(&f.importance, "importance", "", "High, Normal or Low")
	fs.StringArrayVar(&f.replyTo, "reply-to", nil, "Reply-To address (repeatable, or ';'-separated)")
	fs.StringArrayVar(&f.headers, "header", nil, "extra header as 'Name: value', such as 'List-Unsubscribe: <...>' (repeatable)")
	fs.StringArrayVar(&f.metadata, "metadata", nil, "KEY=VALUE echoed in every result event (repeatable)")
	fs.StringVar(&f.connection, "connection", "", "named SMTP connection to send through; default \"default\"")
	fs.StringVar(&f.id, "id", "", "idempotency key [A-Za-z0-9_-]{1,128}; generated when absent")
	fs.StringVar(&f.priority, "priority", "", "lane: urgent, normal or bulk, over any Priority the requests name (without it: the request's Priority, else normal, bulk with --batch)")
	fs.StringVar(&f.at, "at", "", "send at this time: RFC 3339 with an offset (2026-12-24T09:00:00+01:00), or a duration from now (+2h)")
	fs.StringVar(&f.batchID, "batch-id", "", "BatchId of the request(s), for cancelling and finding them together; --batch makes one when absent")
	fs.StringVar(&f.unsubscribe, "unsubscribe", "", "add List-Unsubscribe: an https: or mailto: URL, or no value for jetmail's own one-click endpoint")
	fs.Lookup("unsubscribe").NoOptDefVal = "true"
	fs.StringVar(&f.file, "file", "", "read the request as JSON from this file (- for stdin) instead of the flags above")
	fs.StringVar(&f.batch, "batch", "", "publish every request of this file of JSON lines (- for stdin)")
	fs.BoolVar(&f.wait, "wait", false, "wait for the final result; exit 0 only if it is 200")
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long --wait waits")
	f.clientFlags.register(cmd)
	return cmd
}

func (f *sendFlags) run(ctx context.Context, fs *pflag.FlagSet, s stdio) error {
	// A request given with flags on the command line wins over a file
	// named in the environment.
	for _, name := range messageFlags {
		if fl := fs.Lookup(name); fl.Changed && !fromEnv(fl) {
			if fromEnv(fs.Lookup("file")) {
				f.file = ""
			}
			if fromEnv(fs.Lookup("batch")) {
				f.batch = ""
			}
			break
		}
	}
	if f.file != "" && f.batch != "" {
		return badFlags("--file and --batch can not be used together")
	}
	if f.file != "" || f.batch != "" {
		for _, name := range messageFlags {
			if fl := fs.Lookup(name); fl.Changed && !fromEnv(fl) {
				which := "--file"
				if f.batch != "" {
					which = "--batch"
				}
				return badFlags("--%s can not be used with %s: the request comes from the file", name, which)
			}
		}
	}
	if f.wait && f.timeout <= 0 {
		return badFlags("--timeout must be positive, got %s", f.timeout)
	}
	if f.batch != "" {
		return f.runBatch(ctx, s)
	}

	var (
		req     *schema.Request
		payload []byte
		err     error
	)
	if f.file != "" {
		if payload, err = readInput(f.file, s.in); err != nil {
			return err
		}
		req, err = schema.Decode(payload)
		if err == nil {
			err = req.Validate()
		}
	} else {
		if req, err = f.request(); err != nil {
			return err
		}
		err = req.Validate()
	}
	if err != nil {
		return invalidRequest(s.errOut, "", err)
	}

	opts, err := f.publishOptions(false)
	if err != nil {
		return err
	}
	stopTracing, err := startTracing(ctx, "jetmail-send")
	if err != nil {
		return err
	}
	defer stopTracing()
	// The request carries a traceparent even when tracing is off
	// (contract §12).
	ctx, span := tracing.StartSend(ctx, "jetmail send")
	defer span.End()
	c, err := f.connect("send")
	if err != nil {
		return err
	}
	defer c.Close()
	var (
		id  string
		ack *jetstream.PubAck
	)
	if payload != nil {
		id, ack, err = c.p.PublishJSON(ctx, payload, opts...)
	} else {
		id, ack, err = c.p.Publish(ctx, req, opts...)
	}
	if err != nil {
		return f.publishError(s.errOut, err)
	}
	fmt.Fprintln(s.out, id)
	if ack.Duplicate {
		fmt.Fprintf(s.errOut, "jetmail: %s was already published (same Id within the duplicate window); nothing new was stored\n", id)
	}
	if !f.wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	res, err := c.p.Wait(wctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return fmt.Errorf("no final result within --timeout %s: %w", f.timeout, err)
		}
		return f.clientError(err)
	}
	if err := printJSON(s.out, res); err != nil {
		return err
	}
	if res.Status != schema.Status200 {
		return silentExit(exitFailed)
	}
	return nil
}

// publishError reports a failed publish.
func (f *sendFlags) publishError(w io.Writer, err error) error {
	var ve *schema.ValidationError
	if errors.As(err, &ve) {
		return invalidRequest(w, "", err)
	}
	return f.clientError(err)
}

// request builds the request of the message flags. Mistakes in the flags'
// own syntax are usage errors; the request's content is left to Validate.
func (f *sendFlags) request() (*schema.Request, error) {
	req := &schema.Request{
		To:         splitAddresses(f.to),
		CC:         splitAddresses(f.cc),
		Bcc:        splitAddresses(f.bcc),
		ReplyTo:    splitAddresses(f.replyTo),
		From:       f.from,
		Subject:    f.subject,
		Body:       f.body,
		IsHtml:     schema.Bool(f.html),
		TextBody:   f.text,
		Connection: f.connection,
		Id:         f.id,
		BatchId:    f.batchID,
	}
	switch f.unsubscribe {
	case "":
	case "true":
		req.Unsubscribe = schema.Unsubscribe{OneClick: true}
	default:
		req.Unsubscribe = schema.Unsubscribe{URL: f.unsubscribe}
	}
	if f.at != "" {
		t, err := sendAt(f.at, time.Now())
		if err != nil {
			return nil, err
		}
		req.SendAt = &t
	}
	if f.importance != "" {
		// Normalises the case as decoding does; a wrong value is kept for
		// Validate to report.
		_ = req.Importance.UnmarshalJSON([]byte(strconv.Quote(f.importance)))
	}
	for _, h := range f.headers {
		name, value, ok := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, badFlags("--header wants 'Name: value', got %q", h)
		}
		if req.Headers == nil {
			req.Headers = map[string]string{}
		}
		if _, dup := req.Headers[name]; dup {
			return nil, badFlags("--header %s is given twice", name)
		}
		req.Headers[name] = strings.TrimSpace(value)
	}
	for _, m := range f.metadata {
		k, v, ok := strings.Cut(m, "=")
		if !ok || k == "" {
			return nil, badFlags("--metadata wants KEY=VALUE, got %q", m)
		}
		if req.Metadata == nil {
			req.Metadata = map[string]string{}
		}
		req.Metadata[k] = v
	}
	for _, path := range f.attach {
		a, err := attachment(path, "")
		if err != nil {
			return nil, err
		}
		req.Attachments = append(req.Attachments, a)
	}
	for _, in := range f.inline {
		cid, path, ok := strings.Cut(in, "=")
		if !ok || cid == "" || path == "" {
			return nil, badFlags("--inline wants CID=FILE, got %q", in)
		}
		a, err := attachment(path, cid)
		if err != nil {
			return nil, err
		}
		req.Attachments = append(req.Attachments, a)
	}
	return req, nil
}

// splitAddresses splits each flag value at ';' and ',' (outside quoted
// display names).
func splitAddresses(values []string) schema.AddressList {
	var out schema.AddressList
	for _, v := range values {
		out = append(out, schema.SplitAddresses(v)...)
	}
	return out
}

// attachment reads a file into a base64 attachment named after the file,
// with its media type guessed from the name or else the content.
func attachment(path, contentID string) (schema.Attachment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return schema.Attachment{}, withCode(exitUsage, err)
	}
	ct := mime.TypeByExtension(filepath.Ext(path))
	if ct == "" {
		ct = http.DetectContentType(data)
	}
	return schema.Attachment{
		ContentData:             base64.StdEncoding.EncodeToString(data),
		ContentType:             ct,
		ContentTransferEncoding: "base64",
		FileName:                filepath.Base(path),
		ContentId:               contentID,
	}, nil
}

// readInput reads a whole file, or stdin for "-".
func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("reading stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	return b, nil
}

// invalidRequest prints every field error of an invalid request on w and
// ends the command with exit status 2. where, when set, says which request
// (such as "line 3").
func invalidRequest(w io.Writer, where string, err error) error {
	var ve *schema.ValidationError
	if !errors.As(err, &ve) {
		return withCode(exitUsage, err)
	}
	if where != "" {
		where = " (" + where + ")"
	}
	fmt.Fprintf(w, "jetmail: invalid request%s, nothing was published:\n", where)
	for _, fe := range ve.Fields {
		fmt.Fprintf(w, "  %s\n", fe.String())
	}
	return silentExit(exitUsage)
}

// printJSON writes v as indented JSON and a newline, leaving <, > and &
// as they are (Message-IDs have angle brackets).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// sendAt reads --at: an RFC 3339 time with an offset, or "+DURATION" from
// now.
func sendAt(v string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutPrefix(v, "+"); ok {
		dur, err := time.ParseDuration(d)
		if err != nil || dur < 0 {
			return time.Time{}, badFlags("--at %q: want an RFC 3339 time with an offset or +DURATION, such as +2h", v)
		}
		return now.Add(dur).Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badFlags("--at %q: want an RFC 3339 time with an offset, such as 2026-12-24T09:00:00+01:00, or +DURATION", v)
	}
	return t, nil
}

// publishOptions are the producer options of --priority and --batch-id
// (for --batch: the bulk lane and a batch Id by default).
func (f *sendFlags) publishOptions(batch bool) ([]producer.PublishOption, error) {
	var opts []producer.PublishOption
	if f.priority != "" {
		l, err := schema.ParseLane(f.priority)
		if err != nil || l == "" {
			return nil, badFlags("--priority must be urgent, normal or bulk, got %q", f.priority)
		}
		opts = append(opts, producer.WithPriority(l))
	} else if batch {
		opts = append(opts, producer.WithDefaultPriority(schema.LaneBulk))
	}
	if f.batchID != "" {
		if !schema.ValidID(f.batchID) {
			return nil, badFlags("--batch-id must match [A-Za-z0-9_-]{1,128}, got %q", f.batchID)
		}
		opts = append(opts, producer.WithBatch(f.batchID))
	}
	return opts, nil
}
