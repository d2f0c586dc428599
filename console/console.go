// Package console is jetmail's web console (contract §13): server-rendered
// pages under /ui/ for the people who run jetmail, served by every worker
// and by `jetmail gateway` beside the HTTP API.
//
// The pages, whose paths are stable so that they can be linked:
//
//	/ui/                 the overview: waiting per lane, in flight, scheduled,
//	                     results per half minute over the last 15 minutes,
//	                     workers, SMTP connections, webhook backlog (live)
//	/ui/messages?q=      search by Id, recipient, subject or batch, with
//	                     state and lane filters, newest first
//	/ui/messages/{Id}    one message: its events, SMTP replies, recipients,
//	                     its envelope; Cancel while it can be cancelled
//	/ui/dead             dead letters, with Replay for one or all
//	/ui/suppressions     the suppression list: search, add, remove
//
// Everything it serves is embedded (html/template pages, one style sheet,
// one small script): it needs no internet connection and no build step.
// The pages work without the script, which only refreshes the live parts
// and the relative times.
//
// When API tokens are configured the console asks for one once and keeps
// a session in a cookie (see auth.go): never the token itself, but a value
// signed with a key derived from it, so that every worker and gateway with
// the same tokens accepts it and a leaked cookie is not an API token.
// Every form that changes something carries a CSRF token bound to the
// session. Without tokens the console is open, as the API is.
package console

import (
	"cmp"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/jetmail/jetmail/internal/ratelimit"
	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
	"github.com/jetmail/jetmail/suppress"
)

//go:embed assets templates
var files embed.FS

// Config configures a Console.
type Config struct {
	// Names are the subjects, streams and consumers; zero fields take the
	// contract's defaults. They must match the workers'.
	Names schema.Names
	// JS is the JetStream of the deployment. Required.
	JS jetstream.JetStream
	// Search is the index the messages page searches; the caller runs and
	// closes it. Nil: the page finds messages by Id only, and says that
	// search is off.
	Search *search.Index
	// Producer cancels messages, reads their events and replays dead
	// letters. Nil: New makes one for Names.
	Producer *producer.Producer
	// Suppressions is the suppression list the suppressions page shows
	// and edits. Nil: the page says that it is not available.
	Suppressions *suppress.Store
	// Tokens are the HTTP API's bearer tokens. When there are any, the
	// console asks for one of them before it shows anything. Empty: the
	// console is open, as the API is.
	Tokens []string
	// Cancelled, when set, counts the messages the console cancelled (the
	// worker's jetmail_cancelled_total).
	Cancelled prometheus.Counter
	// SessionTTL is how long a login lasts. Default 12h.
	SessionTTL time.Duration
	// LoginLimit and LoginBurst bound the login attempts per client
	// address: LoginBurst at once, then LoginLimit a second. Defaults
	// one every 3 s (20 a minute) and 20.
	LoginLimit rate.Limit
	LoginBurst int
	// Logger receives the console's logs. Nil discards them.
	Logger *slog.Logger
}

// Console serves the web console under /ui/. Create one with New, mount
// it on "/ui/", and Close it when done. It is safe for concurrent use.
type Console struct {
	names     schema.Names
	js        jetstream.JetStream
	search    *search.Index
	producer  *producer.Producer
	sup       *suppress.Store
	cancelled prometheus.Counter
	log       *slog.Logger
	auth      *auth
	logins    *ratelimit.PerClient
	pages     *pages
	mux       *http.ServeMux
	stats     *overviewSource
	workers   *workerList
	assets    fs.FS
	assetTag  string // the assets' version, for their URLs
	now       func() time.Time
}

// New returns the console for cfg. It subscribes to the workers'
// heartbeats (core NATS) at once, so that the overview can list them;
// Close ends the subscription. It fails without a JetStream, on an empty
// token, or on names the producer refuses.
func New(cfg Config) (*Console, error) {
	if cfg.JS == nil {
		return nil, errors.New("console: New needs a JetStream, got nil")
	}
	c := &Console{
		names:     cfg.Names.WithDefaults(),
		js:        cfg.JS,
		search:    cfg.Search,
		producer:  cfg.Producer,
		sup:       cfg.Suppressions,
		cancelled: cfg.Cancelled,
		log:       cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		now:       time.Now,
	}
	var err error
	if c.auth, err = newAuth(cfg.Tokens, cmp.Or(cfg.SessionTTL, 12*time.Hour)); err != nil {
		return nil, err
	}
	c.logins = ratelimit.New(cmp.Or(cfg.LoginLimit, rate.Every(3*time.Second)), cmp.Or(cfg.LoginBurst, 20))
	if c.producer == nil {
		c.producer, err = producer.New(c.js,
			producer.WithSubjectPrefix(c.names.Prefix),
			producer.WithResultStream(c.names.ResultStream),
			producer.WithDeadStream(c.names.DeadStream))
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
	}
	if c.assets, err = fs.Sub(files, "assets"); err != nil {
		return nil, err
	}
	c.assetTag = assetTag(c.assets)
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	c.stats = newOverviewSource(c)
	if c.workers, err = watchWorkers(c.js.Conn(), c.names.HeartbeatSubject(), c.now); err != nil {
		return nil, fmt.Errorf("console: heartbeats: %w", err)
	}
	c.routes()
	return c, nil
}

// Close ends the subscription to the workers' heartbeats. The console
// still answers afterwards, without workers. Calling it more than once is
// harmless.
func (c *Console) Close() error { return c.workers.close() }

// routes mounts the pages.
func (c *Console) routes() {
	m := http.NewServeMux()
	m.Handle("GET /ui/assets/", http.StripPrefix("/ui/assets/", c.assetHandler()))
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.session(c.logout))

	m.HandleFunc("GET /ui/{$}", c.session(c.overviewPage))
	m.HandleFunc("GET /ui/live/overview", c.session(c.overviewLive))
	m.HandleFunc("GET /ui/messages", c.session(c.messagesPage))
	m.HandleFunc("GET /ui/messages/{id}", c.session(c.messagePage))
	m.HandleFunc("GET /ui/live/messages/{id}", c.session(c.messageLive))
	m.HandleFunc("POST /ui/messages/{id}/cancel", c.session(c.cancel))
	m.HandleFunc("GET /ui/dead", c.session(c.deadPage))
	m.HandleFunc("POST /ui/dead/replay", c.session(c.replay))
	m.HandleFunc("GET /ui/suppressions", c.session(c.suppressionsPage))
	m.HandleFunc("POST /ui/suppressions", c.session(c.addSuppression))
	m.HandleFunc("POST /ui/suppressions/remove", c.session(c.removeSuppression))
	m.HandleFunc("/ui/", func(rw http.ResponseWriter, r *http.Request) {
		c.session(func(rw http.ResponseWriter, r *http.Request, s *session) {
			c.fail(rw, r, s, http.StatusNotFound, "There is no such page in the console.")
		})(rw, r)
	})
	c.mux = m
}

// ServeHTTP serves the console's pages, every one under /ui/; mount the
// console on "/ui/". Cross-origin POSTs are refused before anything else
// (http.CrossOriginProtection), and every state-changing form must also
// carry the session's CSRF token.
func (c *Console) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	h := rw.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	if err := crossOrigin.Check(r); err != nil {
		c.log.WarnContext(r.Context(), "console: cross-origin request refused", "method", r.Method, "path", r.URL.Path, "origin", r.Header.Get("Origin"))
		http.Error(rw, "cross-origin request refused", http.StatusForbidden)
		return
	}
	c.mux.ServeHTTP(rw, r)
}

// crossOrigin refuses state-changing requests that a browser says come
// from another origin (Sec-Fetch-Site, Origin): the CSRF tokens' first
// line of defence.
var crossOrigin = http.NewCrossOriginProtection()

// assetHandler serves the embedded style sheet, script and icon. A URL with
// the current version tag is cached for good; any other for a minute.
func (c *Console) assetHandler() http.Handler {
	files := http.FileServerFS(c.assets)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("v") == c.assetTag {
			rw.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			rw.Header().Set("Cache-Control", "public, max-age=60")
		}
		files.ServeHTTP(rw, r)
	})
}

// assetTag is a short digest of every asset, which changes with them.
func assetTag(assets fs.FS) string {
	h := sha256.New()
	_ = fs.WalkDir(assets, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(assets, path)
		h.Write([]byte(path))
		h.Write(data)
		return err
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// timeout bounds what one page reads from NATS.
const timeout = 10 * time.Second

// reqCtx is the context of one page's look-ups.
func reqCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), timeout)
}

// natsDown reports whether err looks like NATS being out of reach, for a
// clearer message.
func natsDown(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrNoStreamResponse)
}

// problem turns an error of a look-up into a sentence for the page.
func problem(what string, err error) string {
	if natsDown(err) {
		return what + ": NATS did not answer in time (" + err.Error() + ")"
	}
	return what + ": " + strings.TrimPrefix(err.Error(), "producer: ")
}
