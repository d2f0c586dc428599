package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/term"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/tracing"
)

// batchWindow is how many publishes are awaiting their acknowledgement at
// once in --batch.
const batchWindow = 256

// batchID is the Id of a batch line that has none: derived from the line's
// content and how many identical lines came before it in the file, so that
// re-running an interrupted batch gives every request the Id it had the
// first time, and JetStream (within the duplicate window) and the workers
// (after it) publish and send nothing twice.
func batchID(line []byte, seen map[[sha256.Size]byte]int) string {
	sum := sha256.Sum256(line)
	k := seen[sum]
	seen[sum] = k + 1
	if k > 0 {
		h := sha256.New()
		h.Write(sum[:])
		fmt.Fprintf(h, "#%d", k)
		copy(sum[:], h.Sum(nil))
	}
	return "b" + base64.RawURLEncoding.EncodeToString(sum[:18])
}

// runBatch is `send --batch`: it reads the file line by line, reports
// lines that are not valid requests with their numbers and goes on,
// publishes the valid ones asynchronously with at most batchWindow awaiting
// their acknowledgement, prints each Id once stored, and with --wait counts
// the final results by Status.
func (f *sendFlags) runBatch(ctx context.Context, s stdio) error {
	in, total, closeIn, err := openBatch(f.batch, s.in)
	if err != nil {
		return err
	}
	defer closeIn()

	if f.batchID == "" {
		f.batchID = "batch-" + nuid.Next()
	}
	opts, err := f.publishOptions(true)
	if err != nil {
		return err
	}
	stopTracing, err := startTracing(ctx, "jetmail-send")
	if err != nil {
		return err
	}
	defer stopTracing()
	// One span for the run, the parent of every request's delivery; a
	// traceparent even when tracing is off (contract §12).
	tctx, span := tracing.StartSend(ctx, "jetmail send batch", trace.WithAttributes(attribute.String("jetmail.batch", f.batchID)))
	defer span.End()
	c, err := f.connect("send")
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(s.errOut, "jetmail: batch %s (cancel it with: jetmail cancel --batch %s)\n", f.batchID, f.batchID)

	type pending struct {
		n   int
		id  string
		ack jetstream.PubAckFuture
	}
	var (
		window    []pending
		published = map[string]bool{}
		seen      = map[[sha256.Size]byte]int{}
		lines     int
		failed    int
		dups      int
		invalid   int
	)
	prog := newProgress(s.errOut, "publishing", total)
	settle := func() error {
		for _, p := range window {
			select {
			case ack := <-p.ack.Ok():
				if ack.Duplicate {
					dups++
				}
				published[p.id] = true
				fmt.Fprintln(s.out, p.id)
			case err := <-p.ack.Err():
				if errors.Is(err, jetstream.ErrNoStreamResponse) {
					prog.done()
					return withCode(exitUsage, fmt.Errorf("no JetStream stream stored line %d (NATS at %s, subject prefix %q): is a worker running?", p.n, config.RedactURLs(f.natsURL), f.subjectPrefix))
				}
				failed++
				prog.interrupt()
				fmt.Fprintf(s.errOut, "jetmail: line %d (%s): not published: %v\n", p.n, p.id, err)
			case <-ctx.Done():
				prog.done()
				return ctx.Err()
			}
			prog.add(1)
		}
		window = window[:0]
		return nil
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for n := 1; sc.Scan(); n++ {
		l := bytes.TrimSpace(sc.Bytes())
		if len(l) == 0 {
			continue
		}
		lines++
		line := bytes.Clone(l)
		id, ack, err := c.p.PublishJSONAsync(line, append(opts, producer.WithID(batchID(line, seen)), producer.WithTraceContext(tctx))...)
		var ve *schema.ValidationError
		switch {
		case errors.As(err, &ve):
			invalid++
			prog.interrupt()
			_ = invalidRequest(s.errOut, fmt.Sprintf("line %d", n), err)
			prog.add(1)
			continue
		case err != nil:
			prog.done()
			return fmt.Errorf("line %d: %w", n, f.clientError(err))
		}
		window = append(window, pending{n, id, ack})
		if len(window) == batchWindow {
			if err := settle(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		prog.done()
		return fmt.Errorf("reading %s: %w", f.batch, err)
	}
	if err := settle(); err != nil {
		return err
	}
	prog.done()
	if lines == 0 {
		return badFlags("--batch %s holds no requests", f.batch)
	}
	fmt.Fprintf(s.errOut, "jetmail: published %d of %d requests (%d already published before), %d failed to publish, %d invalid\n",
		lines-invalid-failed, lines, dups, failed, invalid)
	ok := failed == 0 && invalid == 0
	if len(published) == 0 {
		return silentExit(exitUsage)
	}
	if !f.wait {
		if ok {
			return nil
		}
		return silentExit(exitFailed)
	}

	counts, missing, err := f.waitAll(ctx, c, published, s)
	if err != nil {
		return err
	}
	fmt.Fprintln(s.out, "Status\tCount")
	for _, st := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(s.out, "%d\t%d\n", st, counts[st])
		ok = ok && st == schema.Status200
	}
	if missing > 0 {
		fmt.Fprintf(s.out, "none\t%d\n", missing)
		fmt.Fprintf(s.errOut, "jetmail: %d requests have no final result after --timeout %s\n", missing, f.timeout)
		ok = false
	}
	if !ok {
		return silentExit(exitFailed)
	}
	return nil
}

// openBatch opens the --batch input ("-" for stdin) and, for a file,
// counts its non-empty lines for the progress bar's ETA (0: unknown).
func openBatch(name string, stdin io.Reader) (io.Reader, int, func(), error) {
	if name == "-" {
		return stdin, 0, func() {}, nil
	}
	fh, err := os.Open(name)
	if err != nil {
		return nil, 0, nil, withCode(exitUsage, err)
	}
	total := 0
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			total++
		}
	}
	if _, err := fh.Seek(0, io.SeekStart); err != nil {
		fh.Close()
		return nil, 0, nil, err
	}
	return fh, total, func() { fh.Close() }, nil
}

// waitAll follows the result events until every Id in ids has a final
// one, or --timeout passes, and counts the final results by Status.
func (f *sendFlags) waitAll(ctx context.Context, c *client, ids map[string]bool, s stdio) (map[schema.Status]int, int, error) {
	wctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	want := maps.Clone(ids)
	counts := map[schema.Status]int{}
	prog := newProgress(s.errOut, "waiting", len(want))
	defer prog.done()
	var lastErr error
	for res, err := range c.p.Results(wctx, true) {
		lastErr = err
		if err != nil {
			continue // an event that does not decode, or the end
		}
		if !res.Final() || !want[res.Id] {
			continue
		}
		delete(want, res.Id)
		counts[res.Status]++
		prog.add(1)
		if len(want) == 0 {
			break
		}
	}
	switch {
	case len(want) == 0:
	case ctx.Err() != nil:
		return nil, 0, ctx.Err()
	case wctx.Err() == nil && lastErr != nil:
		return nil, 0, f.clientError(lastErr)
	}
	return counts, len(want), nil
}

// progress draws a one-line progress bar with rate and ETA on a terminal,
// and elsewhere (a log file, CI) prints a plain line every few seconds. It
// is not safe for concurrent use.
type progress struct {
	w        io.Writer
	tty      bool
	label    string
	n, total int // total 0: unknown
	start    time.Time
	drawn    time.Time
	drawnN   int
	finished bool
}

// plainEvery is how often progress prints a line when not on a terminal.
const plainEvery = 5 * time.Second

func newProgress(w io.Writer, label string, total int) *progress {
	return &progress{w: w, tty: isTerminal(w), label: label, total: total, start: time.Now(), drawn: time.Now()}
}

func (p *progress) add(k int) {
	p.n += k
	switch {
	case p.tty && (time.Since(p.drawn) > 100*time.Millisecond || p.n == p.total):
		p.draw()
	case !p.tty && time.Since(p.drawn) >= plainEvery:
		fmt.Fprintf(p.w, "jetmail: %s %s\n", p.label, p.status())
		p.drawn, p.drawnN = time.Now(), p.n
	}
}

// status is "n/total rate/s ETA" (or "n rate/s" without a total).
func (p *progress) status() string {
	el := max(time.Since(p.start).Seconds(), 1e-3)
	rate := float64(p.n) / el
	if p.total <= 0 {
		return fmt.Sprintf("%d %.0f/s", p.n, rate)
	}
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(max(p.total-p.n, 0))/rate) * time.Second).Round(time.Second).String()
	}
	return fmt.Sprintf("%d/%d %.0f/s ETA %s", p.n, p.total, rate, eta)
}

func (p *progress) draw() {
	const width = 30
	done := 0
	if p.total > 0 {
		done = min(width, width*p.n/p.total)
	}
	fmt.Fprintf(p.w, "\r%-10s [%s%s] %s ", p.label, strings.Repeat("=", done), strings.Repeat(" ", width-done), p.status())
	p.drawn, p.drawnN = time.Now(), p.n
}

// interrupt ends the current line so that a message can be printed.
func (p *progress) interrupt() {
	if p.tty && p.drawnN > 0 {
		fmt.Fprintln(p.w)
		p.drawnN = 0
	}
}

func (p *progress) done() {
	if p.tty && !p.finished {
		p.draw()
		fmt.Fprintln(p.w)
	}
	p.finished = true
}

// isTerminal reports whether w is a terminal (not a pipe, a file or
// /dev/null, which is a character device too).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
