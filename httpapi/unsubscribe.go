package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"html/template"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"

	"github.com/jetmail/jetmail/suppress"
)

// The one-click unsubscribe endpoint (RFC 8058, contract §9). A message
// sent with "Unsubscribe": true carries
//
//	List-Unsubscribe: <{public-url}/v1/unsubscribe/{token}>
//	List-Unsubscribe-Post: List-Unsubscribe=One-Click
//
// A mail provider's one-click button POSTs List-Unsubscribe=One-Click to
// that URL; a person who follows the link gets a page (GET) with a button
// that POSTs the same. GET never unsubscribes anyone: link scanners follow
// every link. Recipients have no bearer token, so neither route asks for
// one; a bad token is a 404, and each client address is rate-limited.

// oneClickField=oneClickValue is the body of a one-click POST (RFC 8058).
const oneClickField, oneClickValue = "List-Unsubscribe", "One-Click"

func (a *API) registerUnsubscribe(mux *http.ServeMux) {
	if a.sup.tokens == nil {
		return
	}
	mux.HandleFunc("GET /v1/unsubscribe/{token}", a.unsubscribePage)
	mux.HandleFunc("POST /v1/unsubscribe/{token}", a.unsubscribe)
}

// unsubscribePage shows the address and a button; it changes nothing.
func (a *API) unsubscribePage(rw http.ResponseWriter, r *http.Request) {
	addr, ok := a.unsubscribeToken(rw, r)
	if !ok {
		return
	}
	a.page(rw, r, http.StatusOK, page{Title: "Unsubscribe", Address: addr, Form: true})
}

// unsubscribe adds the token's address with reason unsubscribe, when the
// body is List-Unsubscribe=One-Click.
func (a *API) unsubscribe(rw http.ResponseWriter, r *http.Request) {
	addr, ok := a.unsubscribeToken(rw, r)
	if !ok {
		return
	}
	if !oneClick(rw, r) {
		a.page(rw, r, http.StatusBadRequest, page{Title: "Not unsubscribed",
			Message: "This address expects the one-click unsubscribe form (List-Unsubscribe=One-Click). Use the button of the unsubscribe page."})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	_, _, err := a.sup.store.Unsubscribe(ctx, addr)
	switch {
	case errors.Is(err, suppress.ErrEvent):
		// The address is suppressed, which is what the person asked for.
		a.log.ErrorContext(r.Context(), "http api: unsubscribe event not published", "address", addr, "error", err)
	case err != nil:
		a.log.ErrorContext(r.Context(), "http api: unsubscribe failed", "address", addr, "error", err)
		a.page(rw, r, http.StatusInternalServerError, page{Title: "Not unsubscribed",
			Message: "Something went wrong on our side. Please try again in a few minutes."})
		return
	}
	a.page(rw, r, http.StatusOK, page{Title: "Unsubscribed", Address: addr, Done: true})
}

// unsubscribeToken rate-limits the client and reads the token: its
// address, or false after answering 429 or 404.
func (a *API) unsubscribeToken(rw http.ResponseWriter, r *http.Request) (string, bool) {
	if ok, wait := a.sup.limiter.Allow(r); !ok {
		secs := max(1, int(math.Ceil(wait.Seconds())))
		rw.Header().Set("Retry-After", strconv.Itoa(secs))
		a.page(rw, r, http.StatusTooManyRequests, page{Title: "Too many requests",
			Message: "Too many requests from your address. Please try again in " + strconv.Itoa(secs) + " seconds."})
		return "", false
	}
	addr, err := a.sup.tokens.Address(r.PathValue("token"))
	if err != nil {
		a.page(rw, r, http.StatusNotFound, page{Title: "Link not valid",
			Message: "This unsubscribe link is not valid. Please use the link from the message exactly as it is."})
		return "", false
	}
	return addr, true
}

// maxOneClickBody bounds what is read of a one-click POST.
const maxOneClickBody = 8 << 10

// oneClick reports whether r's body is the one-click form: the field
// List-Unsubscribe=One-Click, as application/x-www-form-urlencoded (also
// without a Content-Type) or multipart/form-data (RFC 8058 allows both).
func oneClick(rw http.ResponseWriter, r *http.Request) bool {
	data, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxOneClickBody))
	if err != nil {
		return false
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case r.Header.Get("Content-Type") == "" || err == nil && mt == "application/x-www-form-urlencoded":
		v, err := url.ParseQuery(string(data))
		return err == nil && v.Get(oneClickField) == oneClickValue
	case err == nil && mt == "multipart/form-data" && params["boundary"] != "":
		form, err := multipart.NewReader(bytes.NewReader(data), params["boundary"]).ReadForm(maxOneClickBody)
		if err != nil {
			return false
		}
		defer form.RemoveAll()
		return len(form.Value[oneClickField]) > 0 && form.Value[oneClickField][0] == oneClickValue
	}
	return false
}

// page is what the unsubscribe pages show.
type page struct {
	Title   string
	Address string // the address, escaped by the template
	Message string
	Form    bool // the button that POSTs the one-click form
	Done    bool // unsubscribed
}

// pageCSS is the pages' only style, inline; its hash is in the
// Content-Security-Policy, which allows nothing else.
const pageCSS = `body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330}
main{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{margin:0 0 1rem;font-size:1.4rem}
.address{font-weight:600;overflow-wrap:anywhere}
button{font:inherit;padding:.6rem 1.4rem;border:0;border-radius:6px;background:#c62828;color:#fff;cursor:pointer}
button:focus{outline:3px solid #ffab91}`

var (
	pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{.Title}}</title>
<style>` + pageCSS + `</style>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
{{- if .Form}}
<p>Stop sending these mailings to <span class="address">{{.Address}}</span>?</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>
{{- else if .Done}}
<p><span class="address">{{.Address}}</span> will no longer receive these mailings.</p>
{{- else}}
<p>{{.Message}}</p>
{{- end}}
</main>
</body>
</html>
`))
	pageCSP = func() string {
		sum := sha256.Sum256([]byte(pageCSS))
		return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
			"'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	}()
)

// page writes one of the unsubscribe pages.
func (a *API) page(rw http.ResponseWriter, r *http.Request, status int, p page) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil { // not with these pages
		a.log.ErrorContext(r.Context(), "http api: unsubscribe page", "error", err)
	}
	h := rw.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	if status >= 400 && status < 500 {
		a.log.DebugContext(r.Context(), "http api: unsubscribe refused", "method", r.Method, "status", status)
	}
	rw.WriteHeader(status)
	_, _ = rw.Write(buf.Bytes())
}
