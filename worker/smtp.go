package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
	"golang.org/x/time/rate"

	"github.com/jetmail/jetmail/schema"
)

// TLSMode is the TLS policy of an SMTP connection, from the URL's tls
// parameter (contract §5).
type TLSMode string

// The TLS modes. Implicit TLS (smtps://) is not a mode: it is always
// encrypted.
const (
	// TLSOpportunistic uses STARTTLS when the server offers it. The default.
	TLSOpportunistic TLSMode = "opportunistic"
	// TLSRequired refuses to send when the server does not offer STARTTLS.
	TLSRequired TLSMode = "required"
	// TLSNone never uses STARTTLS.
	TLSNone TLSMode = "none"
)

// SMTPConfig is one named SMTP connection.
type SMTPConfig struct {
	// URL is smtp://[user[:pass]@]host[:port][?tls=required|none] (port 25
	// by default; STARTTLS when offered unless tls=none) or
	// smtps://[user[:pass]@]host[:port] (implicit TLS, port 465).
	URL string
	// Password, when set, replaces the URL's password; cmd fills it from a
	// file or an environment variable so that the URL holds no secret.
	Password string
	// CAFile is a PEM file of certificate authorities to verify the server
	// with, instead of the system roots.
	CAFile string
	// InsecureSkipVerify turns certificate verification off. Only for
	// tests and lab relays; never the default.
	InsecureSkipVerify bool
	// PoolSize is the largest number of SMTP sessions this worker keeps
	// open to the server. Default 4.
	PoolSize int
	// Timeout bounds each SMTP command and the dial. Default 30s.
	Timeout time.Duration
	// IdleTimeout closes a pooled session that has not been used for this
	// long. Default 30s.
	IdleTimeout time.Duration
	// From is the default sender of requests without From.
	From string
	// AllowedSenders, when not empty, lists the only senders this
	// connection accepts: addresses, or "@domain" for a whole domain.
	// Other senders get 403 and are not sent.
	AllowedSenders []string
	// HELO is the name sent in EHLO. Default: the host name.
	HELO string
	// RateLimit caps the messages per second this worker sends through the
	// connection, shared by all its sessions (bursts of up to a tenth of a
	// second's worth). Zero means no limit. Relays throttle (421, 454) clients that
	// send too fast; staying under their rate avoids that.
	RateLimit float64
	// NoPipelining sends one command per round trip even when the server
	// offers PIPELINING (for benchmarks and broken servers).
	NoPipelining bool
}

// smtpTarget is an SMTPConfig resolved into what a dial needs.
type smtpTarget struct {
	host, user, pass string
	port             int
	implicitTLS      bool
	tlsMode          TLSMode
	tlsConfig        *tls.Config
}

// parseSMTPURL resolves c's URL, password and CA file.
func parseSMTPURL(c SMTPConfig) (*smtpTarget, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("smtp url: %w", redactURLError(err))
	}
	t := &smtpTarget{host: u.Hostname(), tlsMode: TLSOpportunistic}
	switch u.Scheme {
	case "smtp":
		t.port = 25
	case "smtps":
		t.port, t.implicitTLS = 465, true
	default:
		return nil, fmt.Errorf("smtp url: scheme must be smtp or smtps, got %q", u.Scheme)
	}
	if t.host == "" {
		return nil, errors.New("smtp url: no host")
	}
	if p := u.Port(); p != "" {
		if t.port, err = strconv.Atoi(p); err != nil || t.port < 1 || t.port > 65535 {
			return nil, fmt.Errorf("smtp url: bad port %q", p)
		}
	}
	if u.User != nil {
		t.user = u.User.Username()
		t.pass, _ = u.User.Password()
	}
	if c.Password != "" {
		t.pass = c.Password
	}
	q := u.Query()
	switch m := TLSMode(strings.ToLower(q.Get("tls"))); m {
	case "":
	case TLSOpportunistic, TLSRequired, TLSNone:
		if t.implicitTLS && m == TLSNone {
			return nil, errors.New("smtp url: tls=none contradicts smtps://")
		}
		t.tlsMode = m
	default:
		return nil, fmt.Errorf("smtp url: tls must be required, opportunistic or none, got %q", m)
	}
	t.tlsConfig = &tls.Config{ServerName: t.host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in for tests
	caFile := c.CAFile
	if caFile == "" {
		caFile = q.Get("ca_file")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("smtp ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("smtp ca file %s: no PEM certificate in it", caFile)
		}
		t.tlsConfig.RootCAs = pool
	}
	return t, nil
}

// redactURLError drops the URL (which may hold a password) from a url
// parse error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// RedactURL returns u with its password replaced by "xxxxx", for logs.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable url)"
	}
	return p.Redacted()
}

// SMTPTransport sends messages over SMTP through a pool of reused sessions
// per named connection. It drives MAIL, RCPT and DATA itself on go-mail's
// *smtp.Client, so that a refused recipient does not abort the others and
// every reply reaches Classify. It is safe for concurrent use.
type SMTPTransport struct {
	pools   map[string]*smtpPool
	metrics *Metrics
	log     *slog.Logger
}

// NewSMTPTransport checks every connection's settings and returns a
// transport for them. It dials nothing: sessions open on first use.
func NewSMTPTransport(conns map[string]SMTPConfig, metrics *Metrics, logger *slog.Logger) (*SMTPTransport, error) {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &SMTPTransport{pools: map[string]*smtpPool{}, metrics: metrics, log: logger}
	for name, c := range conns {
		p, err := newSMTPPool(name, c, metrics, logger)
		if err != nil {
			return nil, fmt.Errorf("connection %q: %w", name, err)
		}
		t.pools[name] = p
	}
	return t, nil
}

// Send delivers env over its named connection ("default" when empty).
func (t *SMTPTransport) Send(ctx context.Context, env *Envelope) (Delivery, error) {
	p, ok := t.pools[connName(env.Connection)]
	if !ok {
		return Delivery{}, withOp("config", fmt.Errorf("unknown connection %q", env.Connection))
	}
	return p.send(ctx, env)
}

// Run closes sessions that sat idle longer than their IdleTimeout until ctx
// ends, then closes all of them (QUIT).
func (t *SMTPTransport) Run(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			t.Close()
			return nil
		case now := <-tick.C:
			for _, p := range t.pools {
				p.expire(now)
			}
		}
	}
}

// Close says QUIT on every idle session. Sessions in use are closed when
// they are returned.
func (t *SMTPTransport) Close() {
	for _, p := range t.pools {
		p.closeIdle()
	}
}

func connName(n string) string {
	if n == "" {
		return "default"
	}
	return n
}

// smtpPool is the set of sessions of one named connection.
type smtpPool struct {
	name    string
	cfg     SMTPConfig
	target  *smtpTarget
	client  *gomail.Client // immutable after construction: only Dial* is used
	metrics *Metrics
	log     *slog.Logger
	limiter *rate.Limiter // nil: no rate limit

	idle chan *session // sessions ready for use
	sem  chan struct{} // one token per open session
	mu   sync.Mutex    // guards closed
	done bool
}

// session is one open SMTP connection.
type session struct {
	c          *smtp.Client
	conn       net.Conn
	lastUsed   time.Time
	pipelining bool // the server offers PIPELINING (RFC 2920)
	smtputf8   bool // the server offers SMTPUTF8 (RFC 6531)
}

type connHolderKey struct{}

// countingConn decrements the open-connection gauge once when closed.
type countingConn struct {
	net.Conn
	once  sync.Once
	gauge interface{ Dec() }
}

func (c *countingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.gauge.Dec)
	return err
}

func newSMTPPool(name string, c SMTPConfig, metrics *Metrics, logger *slog.Logger) (*smtpPool, error) {
	if c.PoolSize == 0 {
		c.PoolSize = 4
	}
	if c.PoolSize < 0 {
		return nil, fmt.Errorf("pool size must be positive, got %d", c.PoolSize)
	}
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Second
	}
	t, err := parseSMTPURL(c)
	if err != nil {
		return nil, err
	}
	p := &smtpPool{
		name: name, cfg: c, target: t, metrics: metrics,
		log:  logger.With("connection", name),
		idle: make(chan *session, c.PoolSize),
		sem:  make(chan struct{}, c.PoolSize),
	}
	if c.RateLimit < 0 {
		return nil, fmt.Errorf("rate limit must not be negative, got %g", c.RateLimit)
	}
	if c.RateLimit > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(c.RateLimit), rateBurst(c.RateLimit))
	}
	gauge := metrics.SMTPConnections.WithLabelValues(name)
	dialer := &net.Dialer{Timeout: c.Timeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		gauge.Inc()
		cc := &countingConn{Conn: conn, gauge: gauge}
		var out net.Conn = cc
		if t.implicitTLS {
			tc := tls.Client(cc, t.tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				cc.Close()
				return nil, withOp("tls", err)
			}
			out = tc
		}
		if h, ok := ctx.Value(connHolderKey{}).(*net.Conn); ok {
			*h = out
		}
		return out, nil
	}
	policy := gomail.TLSOpportunistic
	if t.tlsMode == TLSNone {
		policy = gomail.NoTLS
	}
	opts := []gomail.Option{
		gomail.WithPort(t.port),
		gomail.WithTimeout(c.Timeout),
		gomail.WithTLSPolicy(policy),
		gomail.WithTLSConfig(t.tlsConfig),
		gomail.WithDialContextFunc(dial),
		gomail.WithSMTPAuth(gomail.SMTPAuthNoAuth), // done in open, after the TLS check
	}
	if t.implicitTLS {
		opts = append(opts, gomail.WithSSL())
	}
	if c.HELO != "" {
		opts = append(opts, gomail.WithHELO(c.HELO))
	}
	p.client, err = gomail.NewClient(t.host, opts...)
	if err != nil {
		return nil, fmt.Errorf("smtp client: %w", err)
	}
	return p, nil
}

// open dials a new session: connect, EHLO, STARTTLS per policy, the TLS
// requirement check, then AUTH. On any failure the connection is closed.
func (p *smtpPool) open(ctx context.Context) (*session, error) {
	var conn net.Conn
	c, err := p.client.DialToSMTPClientWithContext(context.WithValue(ctx, connHolderKey{}, &conn))
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		var oe *opError
		switch {
		case errors.As(err, &oe): // the implicit TLS handshake, in dial
			return nil, err
		case conn == nil:
			return nil, withOp("dial", err)
		case tlsFailure(err):
			return nil, withOp("tls", err)
		}
		// The greeting, EHLO/HELO or the STARTTLS command: a reply, a
		// timeout or a dropped connection.
		return nil, withOp("hello", err)
	}
	s := &session{c: c, conn: conn}
	s.pipelining, _ = c.Extension("PIPELINING")
	s.smtputf8, _ = c.Extension("SMTPUTF8")
	_, encrypted := conn.(*tls.Conn)
	if st, err := c.GetTLSConnectionState(); err == nil && st.HandshakeComplete {
		encrypted = true
	}
	if p.target.tlsMode == TLSRequired && !encrypted {
		p.closeSession(s, false)
		return nil, withOp("tls", errTLSRequired)
	}
	if p.target.user != "" {
		if err := c.Auth(p.auth(c)); err != nil {
			p.closeSession(s, true)
			return nil, withOp("auth", err)
		}
	}
	return s, nil
}

// tlsFailure reports whether err comes from a TLS handshake: a certificate
// that does not verify, an alert from the server, or a peer that does not
// speak TLS.
func tlsFailure(err error) bool {
	var (
		certErr  *tls.CertificateVerificationError
		unkAuth  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
	)
	return errors.As(err, &certErr) || errors.As(err, &unkAuth) || errors.As(err, &hostErr) ||
		errors.As(err, &invalid) || errors.As(err, &recErr) || errors.As(err, &alertErr)
}

// auth picks the strongest mechanism the server offers among those that
// need no extra round trips: PLAIN, then LOGIN, then CRAM-MD5.
func (p *smtpPool) auth(c *smtp.Client) smtp.Auth {
	t := p.target
	_, mechs := c.Extension("AUTH")
	allowClear := t.tlsMode == TLSNone
	upper := " " + strings.ToUpper(mechs) + " "
	switch {
	case strings.Contains(upper, " PLAIN "):
		return smtp.PlainAuth("", t.user, t.pass, t.host, allowClear)
	case strings.Contains(upper, " LOGIN "):
		return smtp.LoginAuth(t.user, t.pass, t.host, allowClear)
	case strings.Contains(upper, " CRAM-MD5 "):
		return smtp.CRAMMD5Auth(t.user, t.pass)
	}
	return smtp.PlainAuth("", t.user, t.pass, t.host, allowClear)
}

// get returns an idle session or opens one, waiting for a free slot when
// the pool is full. fresh says whether it was just opened.
func (p *smtpPool) get(ctx context.Context) (s *session, fresh bool, err error) {
	for {
		select {
		case s = <-p.idle:
		default:
			select {
			case s = <-p.idle:
			case p.sem <- struct{}{}:
				s, err = p.open(ctx)
				if err != nil {
					<-p.sem
					return nil, false, err
				}
				return s, true, nil
			case <-ctx.Done():
				return nil, false, withOp("pool", context.Cause(ctx))
			}
		}
		if time.Since(s.lastUsed) < p.cfg.IdleTimeout && s.c.HasConnection() {
			return s, false, nil
		}
		p.discard(s, true)
	}
}

// put returns a healthy session to the pool.
func (p *smtpPool) put(s *session) {
	s.lastUsed = time.Now()
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done {
		p.discard(s, true)
		return
	}
	p.idle <- s // never blocks: at most PoolSize sessions exist
}

// discard closes s (with QUIT when polite) and frees its slot.
func (p *smtpPool) discard(s *session, polite bool) {
	p.closeSession(s, polite)
	<-p.sem
}

func (p *smtpPool) closeSession(s *session, polite bool) {
	if polite {
		_ = s.conn.SetDeadline(time.Now().Add(2 * time.Second))
		_ = s.c.Quit()
	}
	_ = s.conn.Close()
}

// expire closes idle sessions unused for IdleTimeout.
func (p *smtpPool) expire(now time.Time) {
	for range len(p.idle) {
		select {
		case s := <-p.idle:
			if now.Sub(s.lastUsed) >= p.cfg.IdleTimeout {
				p.discard(s, true)
			} else {
				p.idle <- s
			}
		default:
			return
		}
	}
}

// closeIdle closes every idle session and makes put close the busy ones.
func (p *smtpPool) closeIdle() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
	for {
		select {
		case s := <-p.idle:
			p.discard(s, true)
		default:
			return
		}
	}
}

// send runs one SMTP transaction on a pooled session. A reused session
// that turns out to be dead at its first command (closed by the server
// while idle, or answering 421) is replaced once at once: that is pool
// hygiene, not a delivery attempt.
func (p *smtpPool) send(ctx context.Context, env *Envelope) (Delivery, error) {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return Delivery{}, withOp("rate", fmt.Errorf("rate limit: %w", err))
		}
	}
	// Render before taking a session, so a session is held only for the
	// protocol and the message goes out in large writes.
	if _, err := env.render(); err != nil {
		return Delivery{}, withOp("build", err)
	}
	return p.sendOnce(ctx, env, false)
}

func (p *smtpPool) sendOnce(ctx context.Context, env *Envelope, retried bool) (Delivery, error) {
	s, fresh, err := p.get(ctx)
	if err != nil {
		return Delivery{}, err
	}
	d, err, healthy := p.transact(ctx, s, env)
	var oe *opError
	if err != nil && !fresh && !retried && errors.As(err, &oe) && oe.op == "mail" && staleSession(err) {
		p.discard(s, false)
		p.log.DebugContext(ctx, "pooled smtp session was dead; redialling", "id", env.ID, "error", err)
		return p.sendOnce(ctx, env, true)
	}
	if healthy {
		p.put(s)
	} else {
		p.discard(s, false)
	}
	return d, err
}

// rateBurst is the burst of a rate limit: a tenth of a second's worth, at
// least one message.
func rateBurst(perSecond float64) int { return max(1, int(math.Ceil(perSecond/10))) }

// staleSession reports whether err at the first command of a reused
// session means the session was already dead.
func staleSession(err error) bool {
	var tp *textproto.Error
	if errors.As(err, &tp) {
		return tp.Code == 421
	}
	return true // EOF, reset, broken pipe, closed
}

// transact drives MAIL, RCPT… and DATA on s. healthy says whether s can be
// reused afterwards.
func (p *smtpPool) transact(ctx context.Context, s *session, env *Envelope) (d Delivery, err error, healthy bool) {
	// Timeout bounds each command, not the whole transaction (RFC 5321
	// §4.5.3.2 times each one): renew moves the deadline on before every
	// command and every write of the body. Cancelling ctx interrupts any
	// blocked read or write, and renew never undoes that.
	var mu sync.Mutex
	cancelled := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		cancelled = true
		_ = s.conn.SetDeadline(time.Unix(1, 0))
	})
	defer stop()
	renew := func() error {
		mu.Lock()
		defer mu.Unlock()
		if cancelled {
			return context.Cause(ctx)
		}
		return s.conn.SetDeadline(time.Now().Add(p.cfg.Timeout))
	}
	if err := renew(); err != nil {
		return d, withOp("mail", err), false
	}
	if s.pipelining && !p.cfg.NoPipelining {
		return p.transactPipelined(s, env, renew)
	}
	// After a failed command the transaction is reset so the session can
	// carry the next message; a failed RSET means the session is unusable.
	reset := func() bool { return renew() == nil && s.c.Reset() == nil }
	if err := s.c.Mail("<" + env.From + ">"); err != nil {
		return d, withOp("mail", err), isReply(err) && reset()
	}
	var fails []rcptFailure
	for _, rcpt := range env.To {
		if err := renew(); err != nil {
			return d, withOp("rcpt", err), false
		}
		if err := s.c.Rcpt("<" + rcpt + ">"); err != nil {
			if !isReply(err) {
				return d, withOp("rcpt", err), false
			}
			fails = append(fails, rcptFailure{addr: rcpt, err: err})
		}
	}
	if len(fails) == len(env.To) {
		return d, classifyRecipients(fails), reset()
	}
	for _, f := range fails {
		d.Rejected = append(d.Rejected, recipientResult(f.addr, Classify(withOp("rcpt", f.err))))
	}
	if err := renew(); err != nil {
		return d, withOp("data", err), false
	}
	w, err := s.c.Data()
	if err != nil {
		return d, withOp("data", err), isReply(err) && reset()
	}
	if _, err := w.Write(env.raw); err != nil {
		return d, withOp("write", err), false
	}
	// The reply to the end of DATA gets a full Timeout of its own.
	if err := renew(); err != nil {
		return d, withOp("data-close", err), false
	}
	if err := w.Close(); err != nil {
		return d, withOp("data-close", err), isReply(err) && reset()
	}
	d.Reply = &schema.SMTPReply{Code: 250}
	if dc, ok := w.(*smtp.DataCloser); ok {
		if r := replyOf(&textproto.Error{Code: 250, Msg: dc.ServerResponse()}); r != nil {
			d.Reply = r
		}
	}
	return d, nil, ctx.Err() == nil
}

// transactPipelined sends MAIL, every RCPT and DATA in one write and then
// reads their replies in order (RFC 2920), so a message costs two round
// trips instead of three plus one per recipient. The outcome is the same as
// the sequential path's: refused recipients are collected, and the message
// goes ahead when at least one was accepted.
func (p *smtpPool) transactPipelined(s *session, env *Envelope, renew func() error) (d Delivery, err error, healthy bool) {
	t := s.c.Text
	params := ""
	if s.smtputf8 && !isASCII(env.From, env.To) {
		params = " SMTPUTF8"
	}
	t.W.WriteString("MAIL FROM:<" + env.From + ">" + params + "\r\n")
	for _, rcpt := range env.To {
		t.W.WriteString("RCPT TO:<" + rcpt + ">\r\n")
	}
	t.W.WriteString("DATA\r\n")
	if err := t.W.Flush(); err != nil {
		return d, withOp("mail", err), false
	}
	_, _, mailErr := t.ReadResponse(250)
	if mailErr != nil && !isReply(mailErr) {
		return d, withOp("mail", mailErr), false
	}
	var fails []rcptFailure
	for _, rcpt := range env.To {
		if err := renew(); err != nil {
			return d, withOp("rcpt", err), false
		}
		if _, _, err := t.ReadResponse(25); err != nil {
			if !isReply(err) {
				return d, withOp("rcpt", err), false
			}
			fails = append(fails, rcptFailure{addr: rcpt, err: err})
		}
	}
	if err := renew(); err != nil {
		return d, withOp("data", err), false
	}
	_, _, dataErr := t.ReadResponse(354)
	if dataErr != nil && !isReply(dataErr) {
		return d, withOp("data", dataErr), false
	}
	// reset ends a transaction that must not go ahead. A server that
	// answered 354 anyway gets an empty message ended at once.
	reset := func() bool {
		if renew() != nil {
			return false
		}
		if dataErr == nil {
			if _, err := t.W.WriteString(".\r\n"); err != nil || t.W.Flush() != nil {
				return false
			}
			if _, _, err := t.ReadResponse(250); err != nil && !isReply(err) {
				return false
			}
		}
		return s.c.Reset() == nil
	}
	switch {
	case mailErr != nil:
		return d, withOp("mail", mailErr), reset()
	case len(fails) == len(env.To):
		return d, classifyRecipients(fails), reset()
	case dataErr != nil:
		return d, withOp("data", dataErr), s.c.Reset() == nil
	}
	for _, f := range fails {
		d.Rejected = append(d.Rejected, recipientResult(f.addr, Classify(withOp("rcpt", f.err))))
	}
	if err := renew(); err != nil {
		return d, withOp("write", err), false
	}
	if err := writeData(t.W, env.raw, renew); err != nil {
		return d, withOp("write", err), false
	}
	// The reply to the end of DATA gets a full Timeout of its own.
	if err := renew(); err != nil {
		return d, withOp("data-close", err), false
	}
	_, msg, err := t.ReadResponse(250)
	if err != nil {
		return d, withOp("data-close", err), isReply(err) && s.c.Reset() == nil
	}
	d.Reply = replyOf(&textproto.Error{Code: 250, Msg: msg})
	return d, nil, true
}

// writeData writes msg as the content of DATA: every line ended by CRLF
// (a bare LF becomes CRLF), a leading dot doubled (RFC 5321 §4.5.2), and the
// final "." line; then it flushes. It works line by line on the rendered
// message, not byte by byte as textproto's DotWriter does, and renews the
// deadline before each buffer-full so that Timeout bounds a stall, not the
// size of a message.
func writeData(w *bufio.Writer, msg []byte, renew func() error) error {
	for len(msg) > 0 {
		line := msg
		next := len(msg)
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, next = msg[:i], i+1
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line)+3 > w.Available() { // this line makes the writer flush
			if err := renew(); err != nil {
				return err
			}
		}
		if len(line) > 0 && line[0] == '.' {
			w.WriteByte('.')
		}
		w.Write(line)
		if _, err := w.WriteString("\r\n"); err != nil {
			return err
		}
		msg = msg[next:]
	}
	if _, err := w.WriteString(".\r\n"); err != nil {
		return err
	}
	return w.Flush()
}

// isASCII reports whether every address is plain ASCII.
func isASCII(from string, to []string) bool {
	for _, a := range append([]string{from}, to...) {
		for i := 0; i < len(a); i++ {
			if a[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// isReply reports whether err is an SMTP reply (the session is still in
// step with the server) rather than a broken connection.
func isReply(err error) bool {
	var tp *textproto.Error
	return errors.As(err, &tp) && !errors.Is(err, io.EOF)
}
