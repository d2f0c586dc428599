package console

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
)

// TestMessagesBareBatch: a bare word in the search box that is no
// message's Id but some messages' BatchId finds the batch, on every page
// and whatever the filters; a word that is no batch is a part of the
// subject, as before; and a message's Id still comes first.
func TestMessagesBareBatch(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	c := s.client(t)
	var ids []string
	for i := range pageSize + 2 {
		ids = append(ids, s.publish(t, map[string]any{"Id": fmt.Sprintf("digest-%02d", i), "To": fmt.Sprintf("reader%02d@example.org", i),
			"Subject": "Your weekly digest", "Body": "…", "Priority": "bulk", "BatchId": "digest-w19"}))
	}
	ids = append(ids,
		s.publish(t, map[string]any{"Id": "plan-note", "To": "team@example.com", "Subject": "Notes on launch-plan", "Body": "…"}),
		// An Id that is also a batch: the Id wins, as an Id always did.
		s.publish(t, map[string]any{"Id": "reminders", "To": "ops@example.com", "Subject": "Reminder setup", "Body": "…"}),
		s.publish(t, map[string]any{"Id": "reminder-1", "To": "a@example.com", "Subject": "Reminder", "Body": "…", "BatchId": "reminders"}))
	for _, id := range ids {
		s.waitState(t, id, schema.StateSent)
	}
	s.waitIndexed(t)

	rows := func(a answer) []string {
		t.Helper()
		if a.StatusCode != 200 {
			t.Fatalf("status %d\n%s", a.StatusCode, a.body)
		}
		var ids []string
		for _, m := range regexp.MustCompile(`<td class="mono id"><a href="/ui/messages/([^"]+)">`).FindAllStringSubmatch(a.body, -1) {
			ids = append(ids, m[1])
		}
		return ids
	}
	const asBatch = `Messages of batch <strong class="mono">digest-w19</strong>`

	first := c.get("/ui/messages?q=digest-w19")
	page1 := rows(first)
	if len(page1) != pageSize || !strings.Contains(first.body, asBatch) {
		t.Fatalf("q=digest-w19: %d messages, hint %q; want %d, as a batch", len(page1), hint(first.body), pageSize)
	}
	next := regexp.MustCompile(`<a class="btn" href="([^"]+)" id="older">`).FindStringSubmatch(first.body)
	if next == nil {
		t.Fatal("q=digest-w19: no link to the next page")
	}
	second := c.get(strings.ReplaceAll(next[1], "&amp;", "&"))
	page2 := rows(second)
	all := slices.Sorted(slices.Values(append(slices.Clone(page1), page2...)))
	if len(page2) != 2 || !strings.Contains(second.body, asBatch) || len(slices.Compact(all)) != pageSize+2 ||
		all[0] != "digest-00" || all[len(all)-1] != fmt.Sprintf("digest-%02d", pageSize+1) {
		t.Errorf("q=digest-w19, page 2: %v, hint %q; want the batch's last 2", page2, hint(second.body))
	}
	// A filter keeps it a batch, even when none of the batch passes it.
	if a := c.get("/ui/messages?q=digest-w19&state=failed"); len(rows(a)) != 0 || !strings.Contains(a.body, asBatch) {
		t.Errorf("q=digest-w19&state=failed: %v, hint %q; want none, as a batch", rows(a), hint(a.body))
	}
	if got := rows(c.get("/ui/messages?q=batch:digest-w19&lane=bulk")); len(got) != pageSize {
		t.Errorf("q=batch:digest-w19: %d messages, want %d", len(got), pageSize)
	}
	// No batch of that name: a part of the subject.
	if a := c.get("/ui/messages?q=launch-plan"); !slices.Equal(rows(a), []string{"plan-note"}) ||
		!strings.Contains(a.body, "Messages whose subject contains <strong>launch-plan</strong>") {
		t.Errorf("q=launch-plan: %v, hint %q; want plan-note by its subject", rows(a), hint(a.body))
	}
	if got := rows(c.get("/ui/messages?q=weekly")); len(got) != pageSize {
		t.Errorf("q=weekly: %d messages, want a page of the digests by subject", len(got))
	}
	// The Id of a message first.
	if a := c.get("/ui/messages?q=reminders"); a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/messages/reminders" {
		t.Errorf("q=reminders (an Id and a batch): %d to %q, want 303 to the message", a.StatusCode, a.Header.Get("Location"))
	}
	if got := rows(c.get("/ui/messages?q=batch:reminders")); !slices.Equal(got, []string{"reminder-1"}) {
		t.Errorf("q=batch:reminders: %v, want reminder-1", got)
	}
}

// hint is the search page's line that says what was searched for.
func hint(body string) string {
	if m := regexp.MustCompile(`(?s)<p class="hint muted" id="search-hint">(.*?)<span`).FindStringSubmatch(body); m != nil {
		return strings.TrimSpace(m[1])
	}
	return ""
}
