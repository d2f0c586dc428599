package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// deadShown is the most dead letters the page lists, the newest.
const deadShown = 500

// deadData is what the dead letters page shows.
type deadData struct {
	// Q filters by a part of the Id, error, subject or recipients.
	Q string
	// Rows are the dead letters shown, newest first.
	Rows []deadRow
	// Total is how many dead letters there are; Matching how many Q
	// selects.
	Total, Matching int
	// Problem says what could not be read.
	Problem string
}

// deadRow is one dead letter.
type deadRow struct {
	Id, Error, Subject, To string
	Status                 schema.Status
	Lane                   schema.Lane
	More, Attempt          int
	Time                   time.Time
}

// deadPage is /ui/dead.
func (c *Console) deadPage(rw http.ResponseWriter, r *http.Request, s *session) {
	d := deadData{Q: strings.TrimSpace(r.URL.Query().Get("q"))}
	ctx, cancel := reqCtx(r)
	defer cancel()
	needle := strings.ToLower(d.Q)
	for dl, err := range c.producer.DeadLetters(ctx) {
		if errors.Is(err, producer.ErrMalformed) {
			c.log.WarnContext(r.Context(), "console: dead letter skipped", "error", err)
			continue
		}
		if err != nil {
			if !errors.Is(err, producer.ErrNoStream) {
				d.Problem = problem("the dead letters", err)
			}
			break
		}
		d.Total++
		row := deadRow{Id: dl.ID(), Error: dl.Result.Error, Status: dl.Result.Status, Lane: dl.Result.Lane,
			Attempt: dl.Result.Attempt, Time: dl.Result.Time}
		if row.Lane == "" {
			row.Lane = c.names.LaneOf(dl.Subject)
		}
		var rcpts []string
		if req, err := schema.Decode(dl.Request); err == nil {
			row.Subject = req.Subject
			rcpts = slices.Concat(req.To, req.CC, req.Bcc)
			if len(rcpts) > 0 {
				row.To, row.More = rcpts[0], len(rcpts)-1
			}
		}
		if needle != "" && !strings.Contains(strings.ToLower(strings.Join(append([]string{row.Id, row.Error, row.Subject}, rcpts...), "\n")), needle) {
			continue
		}
		d.Matching++
		d.Rows = append(d.Rows, row)
		if len(d.Rows) > 2*deadShown {
			d.Rows = slices.Delete(d.Rows, 0, len(d.Rows)-deadShown)
		}
	}
	if len(d.Rows) > deadShown {
		d.Rows = d.Rows[len(d.Rows)-deadShown:]
	}
	slices.Reverse(d.Rows)
	c.render(rw, r, s, http.StatusOK, "dead", "Dead letters", "dead", d)
}

// replayWait bounds replaying every dead letter.
const replayWait = 2 * time.Minute

// replay replays one dead letter (form field id) or all of them (all=1),
// and shows the outcome on the page the form came from (back).
func (c *Console) replay(rw http.ResponseWriter, r *http.Request, _ *session) {
	back := safeNext(r.PostFormValue("back"))
	if back == "/ui/" {
		back = "/ui/dead"
	}
	ctx, cancel := context.WithTimeout(r.Context(), replayWait)
	defer cancel()
	if r.PostFormValue("all") == "1" {
		c.replayAll(ctx, rw, r, back)
		return
	}
	id := r.PostFormValue("id")
	dl, err := c.producer.DeadLetterOf(ctx, id)
	if errors.Is(err, producer.ErrNotFound) || errors.Is(err, producer.ErrInvalidID) {
		c.redirect(rw, r, back, "warn", "There is no dead letter of "+id+" (any more): nothing was replayed.")
		return
	}
	if err != nil {
		c.redirect(rw, r, back, "error", problem("Reading the dead letter of "+id, err))
		return
	}
	out, err := c.producer.Replay(ctx, dl)
	if err != nil {
		c.log.ErrorContext(r.Context(), "console: replay failed", "id", id, "error", err)
		c.redirect(rw, r, back, "error", problem("Replaying "+id, err))
		return
	}
	c.log.InfoContext(r.Context(), "console: replayed", "id", id, "already_sent", out == producer.AlreadySent)
	if out == producer.AlreadySent {
		c.redirect(rw, r, back, "ok", id+" was sent meanwhile: its dead letter is removed, nothing was sent again.")
		return
	}
	c.redirect(rw, r, back, "ok", "Replayed "+id+": it is queued again, and its events go on on its page.")
}

// replayAll replays every dead letter.
func (c *Console) replayAll(ctx context.Context, rw http.ResponseWriter, r *http.Request, back string) {
	var replayed, sent, failed int
	var firstErr error
	var letters []*producer.DeadLetter
	for dl, err := range c.producer.DeadLetters(ctx) {
		if errors.Is(err, producer.ErrMalformed) {
			failed++
			continue
		}
		if err != nil {
			if !errors.Is(err, producer.ErrNoStream) {
				firstErr = err
			}
			break
		}
		letters = append(letters, dl)
	}
	for _, dl := range letters {
		out, err := c.producer.Replay(ctx, dl)
		switch {
		case err != nil:
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", dl.ID(), err)
			}
		case out == producer.AlreadySent:
			sent++
		default:
			replayed++
		}
	}
	c.log.InfoContext(r.Context(), "console: replayed all", "replayed", replayed, "already_sent", sent, "failed", failed)
	text := fmt.Sprintf("Replayed %d %s", replayed, plural(replayed, "dead letter", "dead letters"))
	if sent > 0 {
		text += fmt.Sprintf("; %d had been sent meanwhile and were only removed", sent)
	}
	switch {
	case firstErr != nil:
		c.redirect(rw, r, back, "error", text+fmt.Sprintf("; %d failed: %s", failed, problem("first", firstErr)))
	case failed > 0:
		c.redirect(rw, r, back, "warn", text+fmt.Sprintf("; %d could not be read", failed))
	case replayed+sent == 0:
		c.redirect(rw, r, back, "ok", "There were no dead letters to replay.")
	default:
		c.redirect(rw, r, back, "ok", text+".")
	}
}

// plural is one or many by n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
