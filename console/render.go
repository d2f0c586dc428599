package console

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jetmail/jetmail/schema"
)

// pages are the parsed templates: one set per page, each the layout with
// the page's own templates.
type pages struct {
	byName map[string]*template.Template
}

// pageNames are the templates/*.html beside layout.html.
var pageNames = []string{"overview", "messages", "message", "dead", "suppressions", "login", "error"}

func parsePages() (*pages, error) {
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/parts.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		p.byName[name] = t
	}
	return p, nil
}

// view is what the layout gets: the page's own data is in Data.
type view struct {
	// Title is the page's title; Heading, when set, its heading instead;
	// Nav names the navigation item to mark.
	Title, Heading, Nav string
	// CSRF is the session's CSRF token, for the forms; empty without a
	// session (the login page).
	CSRF string
	// Logout says whether to offer logging out (tokens are configured).
	Logout bool
	// Flash is the outcome of the action that led here, if any.
	Flash *flash
	// AssetTag versions the asset URLs.
	AssetTag string
	// Now is when the page was made, for relative times.
	Now time.Time
	// Data is the page's own data.
	Data any
}

// flash is the outcome of an action, shown on the page the browser is
// sent to next (post, redirect, get). It travels in a short-lived cookie;
// it is text, escaped like everything else.
type flash struct {
	// Kind is ok, warn or error.
	Kind string `json:"k"`
	// Text says what happened.
	Text string `json:"t"`
}

// setFlash keeps f for the next page this browser gets.
func setFlash(rw http.ResponseWriter, r *http.Request, kind, text string) {
	if len(text) > 1500 {
		text = text[:1500] + "…"
	}
	data, _ := json.Marshal(flash{Kind: kind, Text: text})
	http.SetCookie(rw, &http.Cookie{
		Name: flashCookie, Value: base64.RawURLEncoding.EncodeToString(data), Path: cookiePath, MaxAge: 60,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// takeFlash returns the flash of the request, if any, and deletes it.
func takeFlash(rw http.ResponseWriter, r *http.Request) *flash {
	ck, err := r.Cookie(flashCookie)
	if err != nil {
		return nil
	}
	clearCookie(rw, r, flashCookie)
	data, err := base64.RawURLEncoding.DecodeString(ck.Value)
	var f flash
	if err != nil || json.Unmarshal(data, &f) != nil || f.Text == "" {
		return nil
	}
	switch f.Kind {
	case "ok", "warn", "error":
	default:
		f.Kind = "warn"
	}
	return &f
}

// redirect ends an action: the outcome goes in the flash, and the browser
// to the page at to.
func (c *Console) redirect(rw http.ResponseWriter, r *http.Request, to, kind, text string) {
	setFlash(rw, r, kind, text)
	http.Redirect(rw, r, to, http.StatusSeeOther)
}

// render writes page name, in the layout, with status. s may be nil (the
// login page).
func (c *Console) render(rw http.ResponseWriter, r *http.Request, s *session, status int, name, title, nav string, data any) {
	c.renderWith(rw, r, s, status, name, view{Title: title, Nav: nav, Data: data})
}

// renderWith is render with the view's page fields (Title, Heading, Nav,
// Data) given; it fills in the rest.
func (c *Console) renderWith(rw http.ResponseWriter, r *http.Request, s *session, status int, name string, v view) {
	v.Logout, v.AssetTag, v.Now, v.Flash = !c.auth.open, c.assetTag, c.now(), takeFlash(rw, r)
	if s != nil {
		v.CSRF = s.csrf
	}
	c.write(rw, status, name, "layout", v)
}

// fragment writes the template tmpl of page name alone, for the script
// that refreshes a part of a page.
func (c *Console) fragment(rw http.ResponseWriter, name, tmpl string, s *session, data any) {
	c.write(rw, http.StatusOK, name, tmpl, view{CSRF: s.csrf, AssetTag: c.assetTag, Now: c.now(), Data: data})
}

// write executes a template into a buffer first, so that a failure is a
// clean 500 rather than half a page.
func (c *Console) write(rw http.ResponseWriter, status int, name, tmpl string, v view) {
	var buf bytes.Buffer
	if err := c.pages.byName[name].ExecuteTemplate(&buf, tmpl, v); err != nil {
		c.log.Error("console: page failed", "page", name, "template", tmpl, "error", err)
		http.Error(rw, "the console could not make this page", http.StatusInternalServerError)
		return
	}
	h := rw.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	rw.WriteHeader(status)
	_, _ = rw.Write(buf.Bytes())
}

// errorData is what the error page shows.
type errorData struct {
	Status  int
	Message string
}

// fail shows the error page with status and msg.
func (c *Console) fail(rw http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	c.render(rw, r, s, status, "error", http.StatusText(status), "error", errorData{Status: status, Message: msg})
}

// funcs are the templates' helpers. None returns template.HTML: whatever
// a request or an event holds is escaped.
var funcs = template.FuncMap{
	"rel":        relTime,
	"abs":        absTime,
	"iso":        func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"deref":      func(t *time.Time) time.Time { return *t },
	"num":        formatNum,
	"stateClass": func(s schema.State) string { return "st-" + string(s) },
	"final":      func(s schema.State) bool { return s.Final() },
	"plural":     plural,
	"at":         func(t, now time.Time) timeAt { return timeAt{T: t, Now: now} },
	"why": func(s schema.Status) string {
		if s < 400 || s == schema.Status410 {
			return ""
		}
		return statusTexts[s]
	},
	"statusText": func(s schema.Status) string {
		if t := statusTexts[s]; t != "" {
			return t
		}
		return http.StatusText(int(s))
	},
}

// timeAt is a time to show, and the page's now, for the "time" template.
type timeAt struct{ T, Now time.Time }

// statusTexts say what a result's status means, beside its number.
var statusTexts = map[schema.Status]string{
	schema.Status200: "sent",
	schema.Status202: "waiting",
	schema.Status400: "invalid request",
	schema.Status401: "SMTP authentication failed",
	schema.Status403: "refused (policy, sender or suppressed)",
	schema.Status404: "unknown recipient",
	schema.Status410: "cancelled",
	schema.Status500: "failed",
}

// relTime says how long ago (or in how long) t is from now, in a few
// characters: "just now", "42 s ago", "3 min ago", "in 2 h", "5 d ago".
// The script keeps these up to date; the title of the element holds the
// absolute time.
func relTime(t, now time.Time) string {
	if t.IsZero() {
		return "—"
	}
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + " s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + " min"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + " h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + " d"
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// absTime is t for people, in UTC (the script shows it in the browser's
// zone).
func absTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// formatNum writes an integer with thin spaces between thousands.
func formatNum(v any) string {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case uint64:
		n = int64(x)
	default:
		return fmt.Sprint(v)
	}
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
