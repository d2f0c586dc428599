package suppress

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/jetmail/jetmail/schema"
)

// LineError is a line of an import that was not added.
type LineError struct {
	// Line is the line's number, from 1.
	Line int
	// Text is the line, trimmed.
	Text string
	// Err says why; it wraps ErrInvalidAddress for a bad address.
	Err error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

func (e *LineError) Unwrap() error { return e.Err }

// importConcurrency is how many Adds an import has in flight.
const importConcurrency = 16

// maxLine is the longest line an import reads.
const maxLine = 64 << 10

// Import adds the addresses that r lists, one a line, with the given
// reason, as Add does (an entry already there that is as strong or
// stronger stays). Blank lines and lines beginning with '#' are skipped.
// A line may be an address in any form Canonical takes or an @domain;
// from a CSV or TSV line (an export of another service's list) the first
// field is taken, so a header line is reported as a bad line. Bad lines
// are returned, in order, with their numbers, and the import goes on. It
// returns how many entries it stored; err is a failure to read r or to
// write the bucket, which stops the import (the lines before it may have
// been added).
func (s *Store) Import(ctx context.Context, r io.Reader, reason Reason) (added int, bad []LineError, err error) {
	if !reason.Valid() {
		return 0, nil, fmt.Errorf("suppress: import: %w: %q", ErrInvalidReason, reason)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type job struct {
		line int
		text string
	}
	var (
		mu    sync.Mutex
		first error // the first failure to write
		wg    sync.WaitGroup
		jobs  = make(chan job)
	)
	for range importConcurrency {
		wg.Go(func() {
			for j := range jobs {
				ch, err := s.Add(ctx, Entry{Address: j.text, Reason: reason}, 0)
				mu.Lock()
				switch {
				case errors.Is(err, ErrInvalidAddress):
					bad = append(bad, LineError{Line: j.line, Text: j.text, Err: fmt.Errorf("%w: %q", ErrInvalidAddress, j.text)})
				case err != nil:
					if first == nil {
						first = fmt.Errorf("line %d: %w", j.line, err)
						cancel(first)
					}
				case ch.Stored:
					added++
				}
				mu.Unlock()
			}
		})
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	n := 0
	for sc.Scan() {
		n++
		text := importField(sc.Text())
		if text == "" {
			continue
		}
		select {
		case jobs <- job{n, text}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	slices.SortFunc(bad, func(a, b LineError) int { return a.Line - b.Line })
	switch {
	case first != nil:
		return added, bad, fmt.Errorf("suppress: import: %w", first)
	case ctx.Err() != nil:
		return added, bad, fmt.Errorf("suppress: import: %w", context.Cause(ctx))
	case sc.Err() != nil:
		return added, bad, fmt.Errorf("suppress: import: after line %d: %w", n, sc.Err())
	}
	return added, bad, nil
}

// importField is the address of one import line: empty for a blank line
// or a comment; the first field of a CSV or TSV line.
func importField(line string) string {
	line = strings.TrimSpace(strings.TrimPrefix(line, "\ufeff")) // a byte order mark
	if line == "" || line[0] == '#' {
		return ""
	}
	field, _, _ := strings.Cut(line, "\t")
	if f := schema.SplitAddresses(field); len(f) > 0 {
		field = f[0]
	}
	field = strings.TrimSpace(field)
	if len(field) >= 2 && field[0] == '"' && field[len(field)-1] == '"' {
		field = field[1 : len(field)-1] // a quoted CSV field
	}
	return field
}
