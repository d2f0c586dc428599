package console

import (
	"cmp"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/jetmail/jetmail/suppress"
)

// suppressionsShown is the most entries the page lists.
const suppressionsShown = 500

// suppressionsData is what the suppression list's page shows.
type suppressionsData struct {
	// Q is a part of the address to look for; Reason keeps one reason.
	Q, Reason string
	// Rows are the entries shown, by address.
	Rows []suppress.Entry
	// Total is the entries on the list; Matching those Q and Reason keep.
	Total, Matching int
	// Off says that this instance has no suppression list.
	Off bool
	// Problem says what could not be read.
	Problem string
	// Reasons are the reasons' choices.
	Reasons []suppress.Reason
}

var reasons = []suppress.Reason{suppress.Manual, suppress.Unsubscribe, suppress.Bounce}

// suppressionsPage is /ui/suppressions.
func (c *Console) suppressionsPage(rw http.ResponseWriter, r *http.Request, s *session) {
	qv := r.URL.Query()
	d := suppressionsData{Q: strings.TrimSpace(qv.Get("q")), Reason: qv.Get("reason"), Off: c.sup == nil, Reasons: reasons}
	if c.sup != nil {
		ctx, cancel := reqCtx(r)
		defer cancel()
		needle := strings.ToLower(d.Q)
		for e, err := range c.sup.List(ctx) {
			if errors.Is(err, suppress.ErrMalformed) {
				continue
			}
			if err != nil {
				d.Problem = problem("the suppression list", err)
				break
			}
			d.Total++
			if strings.Contains(e.Address, needle) && (d.Reason == "" || string(e.Reason) == d.Reason) {
				d.Rows = append(d.Rows, e)
			}
		}
		d.Matching = len(d.Rows)
		slices.SortFunc(d.Rows, func(a, b suppress.Entry) int { return cmp.Compare(a.Address, b.Address) })
		if len(d.Rows) > suppressionsShown {
			d.Rows = d.Rows[:suppressionsShown]
		}
	}
	c.render(rw, r, s, http.StatusOK, "suppressions", "Suppression list", "suppressions", d)
}

// suppressionsBack is where a change of the list shows its outcome: the
// list, searched for the address.
func suppressionsBack(addr string) string {
	return "/ui/suppressions?" + url.Values{"q": {addr}}.Encode()
}

// addSuppression adds an address (or @domain) with a reason.
func (c *Console) addSuppression(rw http.ResponseWriter, r *http.Request, _ *session) {
	if c.sup == nil {
		c.redirect(rw, r, "/ui/suppressions", "error", "This instance has no suppression list.")
		return
	}
	raw := strings.TrimSpace(r.PostFormValue("address"))
	addr, err := suppress.Canonical(raw)
	if err != nil {
		c.redirect(rw, r, "/ui/suppressions", "error", "“"+raw+"” is not an email address or @domain: nothing was added.")
		return
	}
	reason, err := suppress.ParseReason(cmp.Or(r.PostFormValue("reason"), string(suppress.Manual)))
	if err != nil {
		c.redirect(rw, r, "/ui/suppressions", "error", "Choose a reason: manual, unsubscribe or bounce.")
		return
	}
	ctx, cancel := reqCtx(r)
	defer cancel()
	ch, err := c.sup.Add(ctx, suppress.Entry{Address: addr, Reason: reason}, 0)
	back := suppressionsBack(addr)
	switch {
	case err != nil:
		c.log.ErrorContext(r.Context(), "console: suppression not added", "address", addr, "error", err)
		c.redirect(rw, r, back, "error", problem("Adding "+addr, err))
	case ch.Stored && ch.Previous == nil:
		c.log.InfoContext(r.Context(), "console: suppression added", "address", addr, "reason", reason)
		c.redirect(rw, r, back, "ok", "Added "+addr+" ("+string(reason)+"): no more mail goes to it.")
	case ch.Stored:
		c.log.InfoContext(r.Context(), "console: suppression replaced", "address", addr, "reason", reason)
		c.redirect(rw, r, back, "ok", addr+" was listed as "+string(ch.Previous.Reason)+"; it is now "+string(reason)+".")
	case ch.Entry.Reason == reason:
		c.redirect(rw, r, back, "ok", addr+" was already listed as "+string(reason)+".")
	default:
		c.redirect(rw, r, back, "warn", addr+" stays listed as "+string(ch.Entry.Reason)+", which "+string(reason)+
			" does not replace; remove it first.")
	}
}

// removeSuppression takes an address (or @domain) off the list.
func (c *Console) removeSuppression(rw http.ResponseWriter, r *http.Request, _ *session) {
	if c.sup == nil {
		c.redirect(rw, r, "/ui/suppressions", "error", "This instance has no suppression list.")
		return
	}
	addr := strings.TrimSpace(r.PostFormValue("address"))
	ctx, cancel := reqCtx(r)
	defer cancel()
	e, err := c.sup.Remove(ctx, addr)
	switch {
	case errors.Is(err, suppress.ErrNotFound), errors.Is(err, suppress.ErrInvalidAddress):
		c.redirect(rw, r, "/ui/suppressions", "warn", addr+" is not on the suppression list: nothing was removed.")
	case err != nil:
		c.log.ErrorContext(r.Context(), "console: suppression not removed", "address", addr, "error", err)
		c.redirect(rw, r, "/ui/suppressions", "error", problem("Removing "+addr, err))
	default:
		c.log.InfoContext(r.Context(), "console: suppression removed", "address", e.Address, "reason", e.Reason)
		c.redirect(rw, r, "/ui/suppressions", "ok", "Removed "+e.Address+" ("+string(e.Reason)+"): mail goes to it again.")
	}
}
