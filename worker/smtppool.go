package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"
	"golang.org/x/time/rate"

	"github.com/jetmail/jetmail/config"
)

// SMTPTransport sends messages over SMTP through a pool of reused sessions
// per named connection. It drives each mail transaction itself (smtptx.go)
// over the session's text connection, so that a refused recipient does not
// abort the others and every reply reaches Classify; go-mail only dials,
// greets, does STARTTLS and authenticates. It is safe for concurrent use.
type SMTPTransport struct {
	pools   map[string]*smtpPool
	metrics *Metrics
	log     *slog.Logger
}

// NewSMTPTransport checks every connection's settings and returns a
// transport for them. It dials nothing: sessions open on first use.
// Metrics may be nil (nothing is registered); a nil logger discards logs.
func NewSMTPTransport(conns map[string]config.SMTP, metrics *Metrics, logger *slog.Logger) (*SMTPTransport, error) {
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
	p, ok := t.pools[config.ConnectionName(env.Connection)]
	if !ok {
		return Delivery{}, withOp(OpConfig, fmt.Errorf("unknown connection %q", env.Connection))
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

// smtpPool is the set of sessions of one named connection.
type smtpPool struct {
	name    string
	cfg     config.SMTP
	target  *config.Target
	client  *gomail.Client // immutable after construction: only Dial* is used
	metrics *Metrics
	log     *slog.Logger
	limiter *rate.Limiter // nil: no rate limit

	idle chan *session // sessions ready for use
	sem  chan struct{} // one token per open session
	mu   sync.Mutex    // guards done
	done bool
}

// session is one open SMTP connection.
type session struct {
	c          *smtp.Client
	conn       net.Conn
	lastUsed   time.Time
	pipelining bool // the server offers PIPELINING (RFC 2920)
	smtputf8   bool // the server offers SMTPUTF8 (RFC 6531)
	eightBit   bool // the server offers 8BITMIME (RFC 6152)
	chunking   bool // the server offers CHUNKING (RFC 3030)
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

func newSMTPPool(name string, c config.SMTP, metrics *Metrics, logger *slog.Logger) (*smtpPool, error) {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	t, err := c.Target()
	if err != nil {
		return nil, err
	}
	p := &smtpPool{
		name: name, cfg: c, target: t, metrics: metrics,
		log:  logger.With("connection", name),
		idle: make(chan *session, c.PoolSize),
		sem:  make(chan struct{}, c.PoolSize),
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
		if t.ImplicitTLS {
			tc := tls.Client(cc, t.TLSConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				cc.Close()
				return nil, withOp(OpTLS, err)
			}
			out = tc
		}
		if h, ok := ctx.Value(connHolderKey{}).(*net.Conn); ok {
			*h = out
		}
		return out, nil
	}
	policy := gomail.TLSOpportunistic
	if t.TLSMode == config.TLSNone {
		policy = gomail.NoTLS
	}
	opts := []gomail.Option{
		gomail.WithPort(t.Port),
		gomail.WithTimeout(c.Timeout),
		gomail.WithTLSPolicy(policy),
		gomail.WithTLSConfig(t.TLSConfig),
		gomail.WithDialContextFunc(dial),
		gomail.WithSMTPAuth(gomail.SMTPAuthNoAuth), // done in open, after the TLS check
	}
	if t.ImplicitTLS {
		opts = append(opts, gomail.WithSSL())
	}
	if c.HELO != "" {
		opts = append(opts, gomail.WithHELO(c.HELO))
	}
	p.client, err = gomail.NewClient(t.Host, opts...)
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
			return nil, withOp(OpDial, err)
		}
		// The greeting, EHLO/HELO or STARTTLS (Classify tells a TLS
		// handshake failure by its error): a reply, a timeout or a drop.
		return nil, withOp(OpHello, err)
	}
	s := &session{c: c, conn: conn}
	s.pipelining, _ = c.Extension("PIPELINING")
	s.smtputf8, _ = c.Extension("SMTPUTF8")
	s.eightBit, _ = c.Extension("8BITMIME")
	s.chunking, _ = c.Extension("CHUNKING")
	_, encrypted := conn.(*tls.Conn)
	if st, err := c.GetTLSConnectionState(); err == nil && st.HandshakeComplete {
		encrypted = true
	}
	if p.target.TLSMode == config.TLSRequired && !encrypted {
		p.closeSession(s, false)
		return nil, withOp(OpTLS, errTLSRequired)
	}
	if p.target.User != "" {
		if err := c.Auth(p.auth(c)); err != nil {
			p.closeSession(s, true)
			return nil, withOp(OpAuth, err)
		}
	}
	return s, nil
}

// auth picks the strongest mechanism the server offers among those that
// need no extra round trips: PLAIN, then LOGIN, then CRAM-MD5.
func (p *smtpPool) auth(c *smtp.Client) smtp.Auth {
	t := p.target
	_, mechs := c.Extension("AUTH")
	allowClear := t.TLSMode == config.TLSNone
	upper := " " + strings.ToUpper(mechs) + " "
	switch {
	case strings.Contains(upper, " PLAIN "):
		return smtp.PlainAuth("", t.User, t.Pass, t.Host, allowClear)
	case strings.Contains(upper, " LOGIN "):
		return smtp.LoginAuth(t.User, t.Pass, t.Host, allowClear)
	case strings.Contains(upper, " CRAM-MD5 "):
		return smtp.CRAMMD5Auth(t.User, t.Pass)
	}
	return smtp.PlainAuth("", t.User, t.Pass, t.Host, allowClear)
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
				return nil, false, withOp(OpPool, context.Cause(ctx))
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

// send runs one mail transaction on a pooled session. A reused session
// that turns out to be dead at its first command (closed by the server
// while idle, or answering 421) is replaced once at once: that is pool
// hygiene, not a delivery attempt.
func (p *smtpPool) send(ctx context.Context, env *Envelope) (Delivery, error) {
	if p.limiter != nil {
		if err := p.limiter.Wait(ctx); err != nil {
			return Delivery{}, withOp(OpRate, fmt.Errorf("rate limit: %w", err))
		}
	}
	// Render before taking a session, so a session is held only for the
	// protocol and the message goes out in large writes.
	if _, err := env.render(); err != nil {
		return Delivery{}, withOp(OpBuild, err)
	}
	for retried := false; ; retried = true {
		s, fresh, err := p.get(ctx)
		if err != nil {
			return Delivery{}, err
		}
		if env.stop != nil && env.stop() {
			p.put(s)
			return Delivery{}, errCancelled
		}
		tx := p.transaction(ctx, s)
		d, err := tx.run(env)
		tx.close()
		var oe *opError
		if err != nil && !fresh && !retried && errors.As(err, &oe) && oe.op == OpMail && staleSession(err) {
			p.discard(s, false)
			p.log.DebugContext(ctx, "pooled smtp session was dead; redialling", "id", env.ID, "error", err)
			continue
		}
		if tx.healthy() {
			p.put(s)
		} else {
			p.discard(s, false)
		}
		return d, err
	}
}

// rateBurst is the burst of a rate limit: a tenth of a second's worth, at
// least one message.
func rateBurst(perSecond float64) int { return max(1, int(math.Ceil(perSecond/10))) }
