package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// batchWindow is how many publishes are awaiting their acknowledgement at
// once in --batch.
const batchWindow = 256

// runBatch is `send --batch`: it checks every line first, publishes the
// valid ones asynchronously in windows of batchWindow, prints each Id once
// stored, and with --wait counts the final results by Status.
func (f *sendFlags) runBatch(ctx context.Context, s stdio) error {
	data, err := readInput(f.batch, s.in)
	if err != nil {
		return err
	}
	type line struct {
		n    int
		data []byte
	}
	var valid []line
	invalid := 0
	for i, l := range bytes.Split(data, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		req, err := schema.Decode(l)
		if err == nil {
			err = req.Validate()
		}
		if err != nil {
			invalid++
			_ = invalidRequest(s.errOut, fmt.Sprintf("line %d", i+1), err)
			continue
		}
		valid = append(valid, line{i + 1, l})
	}
	if len(valid) == 0 {
		if invalid > 0 {
			return silentExit(exitUsage)
		}
		return badFlags("--batch %s holds no requests", f.batch)
	}

	c, err := f.connect("send")
	if err != nil {
		return err
	}
	defer c.Close()

	type pending struct {
		n   int
		id  string
		ack jetstream.PubAckFuture
	}
	var (
		window    []pending
		published = map[string]bool{}
		failed    int
		dups      int
	)
	prog := newProgress(s.errOut, "publishing", len(valid))
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
					return withCode(exitUsage, fmt.Errorf("no JetStream stream stored line %d (NATS at %s, subject prefix %q): is a worker running?", p.n, redactURLs(f.natsURL), f.subjectPrefix))
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
	for _, l := range valid {
		id, ack, err := c.p.PublishJSONAsync(l.data)
		if err != nil {
			prog.done()
			return fmt.Errorf("line %d: %w", l.n, f.clientError(err))
		}
		window = append(window, pending{l.n, id, ack})
		if len(window) == batchWindow {
			if err := settle(); err != nil {
				return err
			}
		}
	}
	if err := settle(); err != nil {
		return err
	}
	prog.done()
	fmt.Fprintf(s.errOut, "jetmail: published %d of %d requests (%d already published before), %d failed to publish, %d invalid\n",
		len(valid)-failed, len(valid)+invalid, dups, failed, invalid)
	ok := failed == 0 && invalid == 0
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

// progress draws a one-line progress bar on a terminal, and nothing
// elsewhere. It is not safe for concurrent use.
type progress struct {
	w        io.Writer
	tty      bool
	label    string
	n, total int
	start    time.Time
	drawn    time.Time
	drawnN   int
	finished bool
}

func newProgress(w io.Writer, label string, total int) *progress {
	return &progress{w: w, tty: isTerminal(w), label: label, total: total, start: time.Now()}
}

func (p *progress) add(k int) {
	p.n += k
	if p.tty && (time.Since(p.drawn) > 100*time.Millisecond || p.n == p.total) {
		p.draw()
	}
}

func (p *progress) draw() {
	const width = 30
	done := 0
	if p.total > 0 {
		done = width * p.n / p.total
	}
	rate := float64(p.n) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "\r%-10s [%s%s] %d/%d %.0f/s ", p.label, strings.Repeat("=", done), strings.Repeat(" ", width-done), p.n, p.total, rate)
	p.drawn, p.drawnN = time.Now(), p.n
}

// interrupt ends the current line so that a message can be printed.
func (p *progress) interrupt() {
	if p.tty && !p.drawn.IsZero() {
		fmt.Fprintln(p.w)
		p.drawn = time.Time{}
	}
}

func (p *progress) done() {
	if p.tty && !p.finished {
		if p.drawn.IsZero() || p.drawnN != p.n {
			p.draw()
		}
		fmt.Fprintln(p.w)
	}
	p.finished = true
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
