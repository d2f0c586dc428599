package console

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/suppress"
)

const testToken = "s3cret-api-token"

// TestLogin checks the login: pages send a browser without a session to
// the login form, a wrong token is refused, the right one gives a session
// cookie scoped to /ui/ that is not the token, and logging out ends it.
func TestLogin(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{tokens: []string{"other-token", testToken}})
	c := s.client(t)

	a := c.get("/ui/dead?q=x")
	if a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/login?next="+url.QueryEscape("/ui/dead?q=x") {
		t.Fatalf("GET /ui/dead without a session: %d to %q, want 303 to the login", a.StatusCode, a.Header.Get("Location"))
	}
	if a := c.get("/ui/live/overview"); a.StatusCode != http.StatusUnauthorized {
		t.Errorf("live part without a session: %d, want 401", a.StatusCode)
	}
	if a := c.get("/ui/login?next=/ui/dead"); a.StatusCode != 200 || !strings.Contains(a.body, `name="token"`) {
		t.Fatalf("login page: %d\n%s", a.StatusCode, a.body)
	}

	a = c.post("/ui/login", url.Values{"token": {"wrong"}, "next": {"/ui/dead"}})
	if a.StatusCode != http.StatusUnauthorized || !strings.Contains(a.body, "That is not one of the API tokens.") {
		t.Errorf("wrong token: %d, want 401 and the error\n%s", a.StatusCode, a.body)
	}
	if ck := cookie(a, sessionCookie); ck != nil {
		t.Errorf("a wrong token got a session cookie %v", ck)
	}
	if a := c.get("/ui/"); a.StatusCode != http.StatusSeeOther {
		t.Errorf("after a wrong token, /ui/ answers %d, want 303 to the login", a.StatusCode)
	}

	a = c.post("/ui/login", url.Values{"token": {testToken}, "next": {"/ui/dead"}})
	if a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/dead" {
		t.Fatalf("right token: %d to %q, want 303 to /ui/dead\n%s", a.StatusCode, a.Header.Get("Location"), a.body)
	}
	ck := cookie(a, sessionCookie)
	if ck == nil {
		t.Fatal("no session cookie after logging in")
	}
	if ck.Path != "/ui/" || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure {
		t.Errorf("session cookie %+v: want Path=/ui/, HttpOnly, SameSite=Strict, not Secure over plain HTTP", ck)
	}
	sum := sha256.Sum256([]byte(testToken))
	for _, form := range []string{testToken, base64.StdEncoding.EncodeToString([]byte(testToken)),
		base64.RawURLEncoding.EncodeToString([]byte(testToken)), hex.EncodeToString(sum[:]),
		base64.RawURLEncoding.EncodeToString(sum[:])} {
		if strings.Contains(ck.Value, form) {
			t.Errorf("the session cookie %q holds the token (as %q)", ck.Value, form)
		}
	}
	a = c.get("/ui/")
	if a.StatusCode != 200 || !strings.Contains(a.body, "Waiting") || !strings.Contains(a.body, `id="logout"`) {
		t.Fatalf("overview after logging in: %d\n%s", a.StatusCode, a.body)
	}

	// A tampered cookie is no session.
	forged := *ck
	forged.Value = ck.Value[:len(ck.Value)-2] + "AA"
	if forged.Value == ck.Value {
		forged.Value = ck.Value[:len(ck.Value)-2] + "BB"
	}
	req, _ := http.NewRequest("GET", s.url+"/ui/", nil)
	req.AddCookie(&forged)
	if resp, err := s.srv.Client().Transport.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("a tampered cookie: %d, want 303 to the login", resp.StatusCode)
	}

	// Logging out needs the CSRF token, then ends the session.
	token := csrf(t, a)
	if a := c.post("/ui/logout", nil); a.StatusCode != http.StatusForbidden {
		t.Errorf("logout without CSRF token: %d, want 403", a.StatusCode)
	}
	a = c.post("/ui/logout", url.Values{"csrf": {token}})
	if a.StatusCode != http.StatusSeeOther || a.Header.Get("Location") != "/ui/login" {
		t.Errorf("logout: %d to %q, want 303 to /ui/login", a.StatusCode, a.Header.Get("Location"))
	}
	if ck := cookie(a, sessionCookie); ck == nil || ck.MaxAge >= 0 {
		t.Errorf("logout did not delete the cookie: %+v", ck)
	}
	if a := c.get("/ui/"); a.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout /ui/ answers %d, want 303 to the login", a.StatusCode)
	}

	// The login never sends anyone elsewhere.
	for _, next := range []string{"https://evil.example/", "//evil.example/ui/", "/v1/messages", `/ui/\evil`, "/ui/login"} {
		a := c.post("/ui/login", url.Values{"token": {"other-token"}, "next": {next}})
		if loc := a.Header.Get("Location"); a.StatusCode != http.StatusSeeOther || loc != "/ui/" {
			t.Errorf("login with next=%q: %d to %q, want 303 to /ui/", next, a.StatusCode, loc)
		}
	}
}

// TestLoginRateLimit checks that one address gets 20 login attempts at
// once: the 21st, even with the right token, is a 429 that says when to
// try again, and gives no session.
func TestLoginRateLimit(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{tokens: []string{testToken}})
	c := s.client(t)
	for i := range 20 {
		if a := c.post("/ui/login", url.Values{"token": {fmt.Sprintf("guess-%d", i)}}); a.StatusCode != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d, want 401", i+1, a.StatusCode)
		}
	}
	a := c.post("/ui/login", url.Values{"token": {testToken}})
	if a.StatusCode != http.StatusTooManyRequests || !strings.Contains(a.body, "Too many attempts from your address") {
		t.Fatalf("attempt 21: %d, want 429 and why\n%s", a.StatusCode, a.body)
	}
	if secs, err := strconv.Atoi(a.Header.Get("Retry-After")); err != nil || secs < 1 || secs > 3 {
		t.Errorf("Retry-After %q, want 1 to 3 seconds", a.Header.Get("Retry-After"))
	}
	if ck := cookie(a, sessionCookie); ck != nil {
		t.Errorf("a refused login got a session cookie %v", ck)
	}
}

// TestSecureCookie checks that the session cookie is Secure over TLS.
func TestSecureCookie(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{tokens: []string{testToken}, tls: true, noSearch: true})
	a := s.client(t).post("/ui/login", url.Values{"token": {testToken}})
	ck := cookie(a, sessionCookie)
	if a.StatusCode != http.StatusSeeOther || ck == nil || !ck.Secure || !ck.HttpOnly || ck.Path != "/ui/" {
		t.Fatalf("login over TLS: %d, cookie %+v: want a Secure, HttpOnly cookie for /ui/", a.StatusCode, ck)
	}
}

// TestCSRF checks that a form that changes something is refused (403)
// without its session's CSRF token, with a wrong one, with another
// session's, and from another origin; and done with it.
func TestCSRF(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	c := s.client(t)
	page := c.get("/ui/suppressions")
	if page.StatusCode != 200 {
		t.Fatalf("suppressions page: %d\n%s", page.StatusCode, page.body)
	}
	if ck := cookie(page, sessionCookie); ck == nil || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ui/" {
		t.Fatalf("an open console's session cookie: %+v", ck)
	}
	token := csrf(t, page)
	other := csrf(t, s.client(t).get("/ui/suppressions"))
	if other == token {
		t.Fatal("two browsers got the same CSRF token")
	}
	add := func(tok string, hdr http.Header) answer {
		form := url.Values{"address": {"csrf@example.com"}, "reason": {"manual"}}
		if tok != "" {
			form.Set("csrf", tok)
		}
		req, _ := http.NewRequest("POST", s.url+"/ui/suppressions", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header[k] = v
		}
		return c.do(req)
	}
	listed := func() bool {
		_, err := s.store.Get(t.Context(), "csrf@example.com")
		return err == nil
	}
	for name, a := range map[string]answer{
		"no token":              add("", nil),
		"a wrong token":         add(strings.Repeat("x", len(token)), nil),
		"another session's":     add(other, nil),
		"a cross-site request":  add(token, http.Header{"Sec-Fetch-Site": {"cross-site"}}),
		"another origin's post": add(token, http.Header{"Origin": {"https://evil.example"}}),
	} {
		if a.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, a.StatusCode)
		}
	}
	if listed() {
		t.Fatal("a refused form added the address")
	}
	a := add(token, http.Header{"Sec-Fetch-Site": {"same-origin"}})
	if a.StatusCode != http.StatusSeeOther || !listed() {
		t.Fatalf("with the token: %d, listed %v; want 303 and the address on the list", a.StatusCode, listed())
	}
	next := c.get(a.Header.Get("Location"))
	if !strings.Contains(next.body, "Added csrf@example.com (manual)") {
		t.Errorf("the page after adding does not say so:\n%s", next.body)
	}
	if again := c.get("/ui/suppressions"); strings.Contains(again.body, "Added csrf@example.com") {
		t.Error("the outcome is shown twice")
	}
}

// TestSessions checks the session values themselves: signed with the key
// of the token used, expiring after the TTL, and dead once the token is no
// longer configured.
func TestSessions(t *testing.T) {
	t.Parallel()
	a, err := newAuth([]string{"one", "two"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	key, ok := a.tokenKey("two")
	if !ok {
		t.Fatal("token two not found")
	}
	if _, ok := a.tokenKey("three"); ok {
		t.Fatal("token three found")
	}
	value, s := a.issue(key, now)
	got, ok := a.verify(value, now.Add(59*time.Minute))
	if !ok || got.csrf != s.csrf || !got.validCSRF(s.csrf) || got.validCSRF(s.csrf[1:]) {
		t.Errorf("verify: %v %+v, want the session with CSRF %q", ok, got, s.csrf)
	}
	if _, ok := a.verify(value, now.Add(time.Hour)); ok {
		t.Error("a session older than the TTL is valid")
	}
	if _, ok := a.verify(value, now.Add(-2*time.Minute)); ok {
		t.Error("a session issued in the future is valid")
	}
	rotated, _ := newAuth([]string{"one"}, time.Hour)
	if _, ok := rotated.verify(value, now); ok {
		t.Error("a session of a token no longer configured is valid")
	}
	open, _ := newAuth(nil, time.Hour)
	if _, ok := open.verify(value, now); ok {
		t.Error("an open console takes a token's session")
	}
	ov, _ := open.issue(openKey, now)
	if _, ok := a.verify(ov, now); ok {
		t.Error("a console with tokens takes an open console's session")
	}
	if _, err := newAuth([]string{"a", ""}, time.Hour); err == nil {
		t.Error("an empty token was accepted")
	}
}

// TestSuppressionsPage adds and removes an entry through the forms and
// checks what the page shows.
func TestSuppressionsPage(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{noSearch: true})
	c := s.client(t)
	token := csrf(t, c.get("/ui/suppressions"))
	a := c.post("/ui/suppressions", url.Values{"csrf": {token}, "address": {"Jan@Example.COM"}, "reason": {"unsubscribe"}})
	page := c.get(a.Header.Get("Location"))
	if !strings.Contains(page.body, "<td class=\"mono\">jan@example.com</td>") || !strings.Contains(page.body, "reason-unsubscribe") {
		t.Fatalf("the list does not show the entry:\n%s", page.body)
	}
	a = c.post("/ui/suppressions", url.Values{"csrf": {token}, "address": {"not an address"}, "reason": {"manual"}})
	if page := c.get(a.Header.Get("Location")); !strings.Contains(page.body, "is not an email address or @domain") {
		t.Errorf("a bad address is not refused:\n%s", page.body)
	}
	a = c.post("/ui/suppressions/remove", url.Values{"csrf": {token}, "address": {"jan@example.com"}})
	page = c.get(a.Header.Get("Location"))
	if !strings.Contains(page.body, "Removed jan@example.com (unsubscribe)") || strings.Contains(page.body, "<td class=\"mono\">jan@example.com</td>") {
		t.Errorf("after removing:\n%s", page.body)
	}
	if _, err := s.store.Get(t.Context(), "jan@example.com"); err == nil || !strings.Contains(err.Error(), suppress.ErrNotFound.Error()) {
		t.Errorf("the entry is still on the list: %v", err)
	}
}
