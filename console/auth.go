package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// How the console knows who may use it.
//
// With API tokens configured, a person logs in once with one of them. The
// console then sets the cookie jetmail_console (Path=/ui/, HttpOnly,
// SameSite=Strict, Secure on TLS), whose value is
//
//	1.<base64url(issued time, 8 bytes | random nonce, 16 bytes)>.<base64url(mac)>
//
// with mac = HMAC-SHA256(key, "session." + the middle part), where key is
// SHA-256 of a fixed label and the token. The token never leaves the login
// form: a cookie that leaks is not an API token, it expires (SessionTTL),
// and removing the token from the configuration ends every session made
// with it. Any worker or gateway with the same tokens accepts the cookie,
// so a load balancer needs no stickiness. Logging out deletes the cookie;
// since sessions are not stored, a copy of a cookie stays valid until it
// expires.
//
// The CSRF token of a session is HMAC-SHA256(key, "csrf." + the middle
// part); every form that changes something carries it, and it is checked
// in constant time. Cross-origin POSTs are also refused by
// http.CrossOriginProtection before they reach a handler.
//
// Without tokens the console is open, as the API is: it gives every
// browser a session of its own (signed with a fixed key) only to bind the
// CSRF tokens to.

const (
	sessionCookie = "jetmail_console"
	flashCookie   = "jetmail_flash"
	csrfField     = "csrf"
	cookiePath    = "/ui/"
)

// auth issues and checks sessions.
type auth struct {
	digests [][sha256.Size]byte // of the tokens, to compare logins in constant time
	keys    [][]byte            // the session keys, one per token; only openKey when open
	open    bool
	ttl     time.Duration
}

// openKey signs the sessions of an open console: they only carry CSRF
// tokens, so the key needs no secret.
var openKey = deriveKey("")

// deriveKey is the session key of a token.
func deriveKey(token string) []byte {
	k := sha256.Sum256([]byte("jetmail console session key v1\x00" + token))
	return k[:]
}

func newAuth(tokens []string, ttl time.Duration) (*auth, error) {
	a := &auth{ttl: ttl, open: len(tokens) == 0}
	for i, t := range tokens {
		if t == "" {
			return nil, fmt.Errorf("console: token %d is empty", i+1)
		}
		a.digests = append(a.digests, sha256.Sum256([]byte(t)))
		a.keys = append(a.keys, deriveKey(t))
	}
	if a.open {
		a.keys = [][]byte{openKey}
	}
	return a, nil
}

// session is a verified session.
type session struct {
	csrf    string
	expires time.Time
}

// tokenKey returns the session key of token when it is one of the
// configured tokens. It compares with every token, in constant time.
func (a *auth) tokenKey(token string) ([]byte, bool) {
	d := sha256.Sum256([]byte(token))
	found := -1
	for i := range a.digests {
		if subtle.ConstantTimeCompare(d[:], a.digests[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return nil, false
	}
	return a.keys[found], true
}

// issue makes a new session signed with key, and its cookie value.
func (a *auth) issue(key []byte, now time.Time) (string, *session) {
	var raw [24]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(now.Unix()))
	_, _ = rand.Read(raw[8:])
	body := base64.RawURLEncoding.EncodeToString(raw[:])
	value := "1." + body + "." + mac(key, "session."+body)
	return value, &session{csrf: mac(key, "csrf."+body), expires: now.Add(a.ttl)}
}

// verify checks a cookie value: its signature by one of the keys, and its
// age.
func (a *auth) verify(value string, now time.Time) (*session, bool) {
	version, rest, _ := strings.Cut(value, ".")
	body, sig, ok := strings.Cut(rest, ".")
	if version != "1" || !ok {
		return nil, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || len(raw) != 24 {
		return nil, false
	}
	var key []byte
	for _, k := range a.keys {
		if hmac.Equal([]byte(sig), []byte(mac(k, "session."+body))) {
			key = k
		}
	}
	if key == nil {
		return nil, false
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(raw[:8])), 0)
	expires := issued.Add(a.ttl)
	if issued.After(now.Add(time.Minute)) || !now.Before(expires) {
		return nil, false
	}
	return &session{csrf: mac(key, "csrf."+body), expires: expires}, true
}

// mac is the base64url HMAC-SHA256 of msg under key.
func mac(key []byte, msg string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// validCSRF reports, in constant time, whether token is the session's.
func (s *session) validCSRF(token string) bool {
	return hmac.Equal([]byte(token), []byte(s.csrf))
}

// setSessionCookie sets the session cookie of value on rw.
func setSessionCookie(rw http.ResponseWriter, r *http.Request, value string, expires time.Time) {
	http.SetCookie(rw, &http.Cookie{
		Name: sessionCookie, Value: value, Path: cookiePath, Expires: expires,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// clearCookie deletes the cookie name.
func clearCookie(rw http.ResponseWriter, r *http.Request, name string) {
	http.SetCookie(rw, &http.Cookie{
		Name: name, Value: "", Path: cookiePath, MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// sessionHandler is a page that needs a session.
type sessionHandler func(rw http.ResponseWriter, r *http.Request, s *session)

// maxFormBytes bounds the body of a form.
const maxFormBytes = 64 << 10

// session wraps h: without a valid session it sends the browser to the
// login page (an open console gives it one); a POST must carry the
// session's CSRF token, or it is refused with 403.
func (c *Console) session(h sessionHandler) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		now := c.now()
		var s *session
		if ck, err := r.Cookie(sessionCookie); err == nil {
			s, _ = c.auth.verify(ck.Value, now)
		}
		if s == nil && c.auth.open {
			var value string
			value, s = c.auth.issue(openKey, now)
			setSessionCookie(rw, r, value, s.expires)
		}
		if s == nil {
			if strings.HasPrefix(r.URL.Path, "/ui/live/") {
				// The script reloads the page, which then goes to the login.
				http.Error(rw, "log in again", http.StatusUnauthorized)
				return
			}
			next := r.URL.RequestURI()
			if r.Method != http.MethodGet {
				next = r.Referer()
			}
			http.Redirect(rw, r, "/ui/login?next="+url.QueryEscape(safeNext(next)), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
			if !s.validCSRF(r.PostFormValue(csrfField)) {
				c.log.WarnContext(r.Context(), "console: form refused: missing or wrong CSRF token", "path", r.URL.Path)
				c.fail(rw, r, s, http.StatusForbidden, "This form has expired or did not come from this console. Go back, reload the page and try again.")
				return
			}
		}
		h(rw, r, s)
	}
}

// safeNext returns next when it is a path of the console, else /ui/: the
// login never sends anyone elsewhere.
func safeNext(next string) string {
	if u, err := url.Parse(next); err == nil && next != "" {
		if u.Scheme == "" && u.Host == "" && u.User == nil && strings.HasPrefix(u.Path, "/ui/") &&
			!strings.HasPrefix(next, "//") && !strings.Contains(next, `\`) &&
			!strings.HasPrefix(u.Path, "/ui/live/") && u.Path != "/ui/login" {
			return u.RequestURI()
		}
	}
	return "/ui/"
}

// loginData is what the login page shows.
type loginData struct {
	Next  string
	Error string
}

// loginPage shows the login form, or goes on when no login is needed.
func (c *Console) loginPage(rw http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	if c.auth.open {
		http.Redirect(rw, r, next, http.StatusSeeOther)
		return
	}
	if ck, err := r.Cookie(sessionCookie); err == nil {
		if _, ok := c.auth.verify(ck.Value, c.now()); ok {
			http.Redirect(rw, r, next, http.StatusSeeOther)
			return
		}
	}
	c.render(rw, r, nil, http.StatusOK, "login", "Log in", "", loginData{Next: next})
}

// login checks the token of the login form and starts a session.
func (c *Console) login(rw http.ResponseWriter, r *http.Request) {
	if c.auth.open {
		http.Redirect(rw, r, "/ui/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(rw, r.Body, maxFormBytes)
	next := safeNext(r.PostFormValue("next"))
	if ok, wait := c.logins.Allow(r); !ok {
		// Guessing tokens takes a long time.
		secs := max(1, int(math.Ceil(wait.Seconds())))
		c.log.WarnContext(r.Context(), "console: too many logins", "remote_addr", r.RemoteAddr)
		rw.Header().Set("Retry-After", strconv.Itoa(secs))
		c.render(rw, r, nil, http.StatusTooManyRequests, "login", "Log in", "",
			loginData{Next: next, Error: fmt.Sprintf("Too many attempts from your address. Please try again in %d seconds.", secs)})
		return
	}
	key, ok := c.auth.tokenKey(strings.TrimSpace(r.PostFormValue("token")))
	if !ok {
		c.log.WarnContext(r.Context(), "console: login refused", "remote_addr", r.RemoteAddr)
		c.render(rw, r, nil, http.StatusUnauthorized, "login", "Log in", "",
			loginData{Next: next, Error: "That is not one of the API tokens."})
		return
	}
	value, s := c.auth.issue(key, c.now())
	setSessionCookie(rw, r, value, s.expires)
	c.log.InfoContext(r.Context(), "console: logged in", "remote_addr", r.RemoteAddr)
	http.Redirect(rw, r, next, http.StatusSeeOther)
}

// logout ends the session in this browser.
func (c *Console) logout(rw http.ResponseWriter, r *http.Request, _ *session) {
	clearCookie(rw, r, sessionCookie)
	if c.auth.open {
		http.Redirect(rw, r, "/ui/", http.StatusSeeOther)
		return
	}
	http.Redirect(rw, r, "/ui/login", http.StatusSeeOther)
}
