// Package smtptest provides an in-process SMTP server for tests, in the
// spirit of net/http/httptest.
//
// A [Server] is a real github.com/emersion/go-smtp server listening on a
// loopback port: clients talk to it over real sockets with the real
// protocol, including STARTTLS, implicit TLS and AUTH. The server records
// every message it accepts and can be told to misbehave with a [Fault]:
// answer a command with an error, stall before answering, or drop the
// connection.
//
// Faults that concern a command are applied by a thin layer that sits
// between the socket (or the TLS session, which this package terminates
// itself) and go-smtp and reads the client's commands one at a time. That
// layer is what lets any command, not only those go-smtp exposes to its
// backend, be failed, and it keeps replies in order even when the client
// pipelines its commands.
//
// All methods of Server are safe for concurrent use.
package smtptest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

const (
	// ioTimeout is the read and write timeout of every connection, and the
	// deadline of TLS handshakes.
	ioTimeout = 30 * time.Second

	// shutdownTimeout bounds how long Close waits for the sessions to end
	// once their connections are closed.
	shutdownTimeout = 10 * time.Second
)

// ErrClosed is returned by the Wait methods of a [Server] that was closed
// before the condition they wait for was met.
var ErrClosed = errors.New("smtptest: server closed")

// A Server is an SMTP server listening on a loopback address, for use in
// tests. Create one with [NewServer].
type Server struct {
	tb   testing.TB
	cfg  config
	addr string

	ln       net.Listener
	smtp     *smtp.Server
	incoming *chanListener

	tlsConfig *tls.Config
	caPEM     []byte
	certPool  *x509.CertPool

	done      chan struct{} // closed when Close starts
	serveDone chan struct{} // closed when smtp.Serve returns
	closeOnce sync.Once
	wg        sync.WaitGroup // accept loop and connection set-up goroutines

	mu        sync.Mutex
	cond      *sync.Cond // signalled on every change of msgs, open, faultHits or closed
	closed    bool
	conns     map[*conn]struct{}
	nconns    int
	open      int
	faults    []*faultState
	faultHits int
	hits      map[string]int
	msgs      []Message
}

// A Message is a message the server accepted: its DATA was answered with
// 250.
type Message struct {
	// From is the reverse path given with MAIL FROM, without angle
	// brackets; it is empty for the null sender <>.
	From string
	// To holds the accepted recipients, in the order they were given.
	To []string
	// Data is the message as received after DATA, dot-unstuffed, with the
	// line endings the client sent (CRLF for a conforming client) and
	// without the terminating ".".
	Data []byte
	// Conn is the number of the connection the message arrived on,
	// counting from 1 in the order connections were accepted.
	Conn int
	// Received is when the server accepted the message.
	Received time.Time
	// TLS reports whether the message was sent over TLS, either implicit
	// or after STARTTLS.
	TLS bool
	// User is the user name the client authenticated as, or empty.
	User string
}

// An Option configures a [Server].
type Option func(*config)

type config struct {
	auth        bool
	user, pass  string
	startTLS    bool
	implicitTLS bool
	maxBytes    int64
}

// WithAuth makes the server advertise AUTH PLAIN and AUTH LOGIN and accept
// only the given credentials. A client must authenticate before MAIL, which
// is otherwise answered with 530 5.7.0; bad credentials are answered with
// 535 5.7.8. Authentication is allowed without TLS.
func WithAuth(user, pass string) Option {
	return func(c *config) {
		c.auth = true
		c.user = user
		c.pass = pass
	}
}

// WithTLS makes the server offer STARTTLS with a self-signed certificate
// for 127.0.0.1, ::1 and localhost, generated when the server starts. Use
// [Server.CACertPEM], [Server.CAFile] or [Server.CertPool] to trust it.
// STARTTLS is offered, not required.
func WithTLS() Option {
	return func(c *config) { c.startTLS = true }
}

// WithImplicitTLS makes the server speak TLS from the first byte, as on
// the smtps port, with the same kind of certificate as [WithTLS]. STARTTLS
// is then not offered.
func WithImplicitTLS() Option {
	return func(c *config) { c.implicitTLS = true }
}

// WithMaxMessageBytes limits the size of messages to n bytes. The limit is
// advertised with the SIZE extension; a MAIL command declaring a larger
// SIZE and a message body longer than n bytes are both answered with
// 552 5.3.4.
func WithMaxMessageBytes(n int64) Option {
	return func(c *config) { c.maxBytes = n }
}

// NewServer starts a server on 127.0.0.1 with a port chosen by the system
// and registers its Close method with t.Cleanup. It fails the test if the
// server cannot be started.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()

	s := &Server{
		tb:        t,
		done:      make(chan struct{}),
		serveDone: make(chan struct{}),
		conns:     make(map[*conn]struct{}),
		hits:      make(map[string]int),
	}
	s.cond = sync.NewCond(&s.mu)
	for _, o := range opts {
		o(&s.cfg)
	}

	if s.cfg.startTLS || s.cfg.implicitTLS {
		conf, caPEM, pool, err := newTLSConfig()
		if err != nil {
			t.Fatalf("smtptest: generating certificate: %v", err)
		}
		s.tlsConfig, s.caPEM, s.certPool = conf, caPEM, pool
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("smtptest: listening: %v", err)
	}
	s.ln = ln
	s.addr = ln.Addr().String()
	s.incoming = newChanListener(ln.Addr())

	srv := smtp.NewServer(backend{s})
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.ReadTimeout = ioTimeout
	srv.WriteTimeout = ioTimeout
	srv.MaxMessageBytes = s.cfg.maxBytes
	srv.ErrorLog = tbLogger{t}
	// TLSConfig stays nil: TLS is terminated by conn, below go-smtp, so
	// that faults can be applied to commands sent over TLS too.
	s.smtp = srv

	go func() {
		defer close(s.serveDone)
		_ = srv.Serve(s.incoming)
	}()
	s.wg.Add(1)
	go s.acceptLoop()

	t.Cleanup(s.Close)
	return s
}

// Addr returns the address the server listens on, as "127.0.0.1:port".
func (s *Server) Addr() string { return s.addr }

// URL returns the server's address as an SMTP URL for jetmail:
// "smtp://127.0.0.1:port?tls=none" for a server without TLS,
// "smtp://127.0.0.1:port" for one started with [WithTLS] and
// "smtps://127.0.0.1:port" for one started with [WithImplicitTLS]. With
// [WithAuth], the URL carries the credentials as its user information.
func (s *Server) URL() string {
	u := url.URL{Scheme: "smtp", Host: s.addr}
	switch {
	case s.cfg.implicitTLS:
		u.Scheme = "smtps"
	case !s.cfg.startTLS:
		u.RawQuery = "tls=none"
	}
	if s.cfg.auth {
		u.User = url.UserPassword(s.cfg.user, s.cfg.pass)
	}
	return u.String()
}

// CACertPEM returns the PEM encoding of the server's self-signed
// certificate, which clients can use as their only certificate authority.
// It returns nil if the server was started without [WithTLS] or
// [WithImplicitTLS].
func (s *Server) CACertPEM() []byte {
	if s.caPEM == nil {
		return nil
	}
	return append([]byte(nil), s.caPEM...)
}

// CAFile writes [Server.CACertPEM] to a file in t.TempDir and returns the
// file's path. It fails the test if the server has no certificate.
func (s *Server) CAFile(t testing.TB) string {
	t.Helper()
	if s.caPEM == nil {
		t.Fatalf("smtptest: CAFile called on a server started without WithTLS or WithImplicitTLS")
	}
	path := filepath.Join(t.TempDir(), "smtptest-ca.pem")
	if err := os.WriteFile(path, s.caPEM, 0o600); err != nil {
		t.Fatalf("smtptest: writing CA file: %v", err)
	}
	return path
}

// CertPool returns a new certificate pool holding only the server's
// self-signed certificate, for use as tls.Config.RootCAs. It returns nil
// if the server has no certificate.
func (s *Server) CertPool() *x509.CertPool {
	if s.certPool == nil {
		return nil
	}
	return s.certPool.Clone()
}

// Close stops the server: it closes the listener and every connection,
// interrupts stalled faults and waits until every goroutine the server
// started has returned. Close is idempotent; NewServer registers it with
// t.Cleanup.
func (s *Server) Close() {
	s.closeOnce.Do(s.close)
}

func (s *Server) close() {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.cond.Broadcast()
	s.mu.Unlock()

	close(s.done)
	_ = s.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	// After this no connection can reach go-smtp any more.
	s.wg.Wait()

	// Let Serve return before Shutdown waits for the sessions, so that
	// go-smtp's own WaitGroup is never added to while it is waited on.
	_ = s.incoming.Close()
	<-s.serveDone

	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := s.smtp.Shutdown(ctx); err != nil {
		s.tb.Errorf("smtptest: sessions still running after Close: %v", err)
	}
}

// AddFault adds a fault. Faults are checked in the order they were added;
// the first one that matches a command and has not used up its Times
// fires. A fault can be added before or while clients are connected.
// AddFault reports an invalid fault with t.Errorf and ignores it.
func (s *Server) AddFault(f Fault) {
	fs, err := newFaultState(f)
	if err != nil {
		s.tb.Errorf("smtptest: AddFault: %v", err)
		return
	}
	s.mu.Lock()
	s.faults = append(s.faults, fs)
	s.mu.Unlock()
}

// ClearFaults removes every fault. It does not reset [Server.FaultHits].
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// FaultHits returns how many times faults have fired, all faults together.
func (s *Server) FaultHits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faultHits
}

// WaitFaultHits waits until faults have fired at least n times, all faults
// together. It returns an error if ctx is done or the server is closed
// first.
func (s *Server) WaitFaultHits(ctx context.Context, n int) error {
	err := s.wait(ctx, func() bool { return s.faultHits >= n })
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		return fmt.Errorf("waiting for %d fault hits, have %d: %w", n, s.faultHits, err)
	}
	return nil
}

// Hits returns how many times the server received the command cmd, such
// as "EHLO", "MAIL", "RCPT", "DATA", "RSET" or "AUTH", whatever the reply
// was; "CONNECT" counts accepted connections. The name is not case
// sensitive. Lines the client sends during AUTH exchanges and message
// bodies are not commands and are not counted.
func (s *Server) Hits(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[strings.ToUpper(cmd)]
}

// Messages returns copies of the messages the server accepted, in the
// order they were accepted.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.copyMessages()
}

// MessageCount returns how many messages the server accepted.
func (s *Server) MessageCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// WaitMessages waits until the server has accepted at least n messages
// and returns copies of all the messages accepted so far, as Messages
// does. If ctx is done or the server is closed first, it returns the
// messages accepted so far and an error.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	err := s.wait(ctx, func() bool { return len(s.msgs) >= n })
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return s.copyMessages(), fmt.Errorf("waiting for %d messages, got %d: %w", n, len(s.msgs), err)
	}
	return s.copyMessages(), nil
}

// Connections returns how many connections the server has accepted.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nconns
}

// OpenConnections returns how many accepted connections are still open.
// A connection is closed when either side closes it; the server notices a
// client's close only when it next reads, so the count can lag behind the
// client. Use [Server.WaitOpenConnections] to wait for it.
func (s *Server) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// WaitOpenConnections waits until exactly n connections are open. It
// returns an error if ctx is done or the server is closed first.
func (s *Server) WaitOpenConnections(ctx context.Context, n int) error {
	err := s.wait(ctx, func() bool { return s.open == n })
	if err != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		return fmt.Errorf("waiting for %d open connections, have %d: %w", n, s.open, err)
	}
	return nil
}

// wait blocks until cond, called with s.mu held, reports true, ctx is done
// or the server is closed.
func (s *Server) wait(ctx context.Context, cond func() bool) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()

	s.mu.Lock()
	defer s.mu.Unlock()
	for !cond() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.closed {
			return ErrClosed
		}
		s.cond.Wait()
	}
	return nil
}

func (s *Server) copyMessages() []Message {
	out := make([]Message, len(s.msgs))
	for i, m := range s.msgs {
		m.To = append([]string(nil), m.To...)
		m.Data = append([]byte(nil), m.Data...)
		out[i] = m
	}
	return out
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m.Received = time.Now()
	s.msgs = append(s.msgs, m)
	s.cond.Broadcast()
}

func (s *Server) hit(cmd string) {
	s.mu.Lock()
	s.hits[cmd]++
	s.mu.Unlock()
}

// sleep waits for d and reports whether it did so without the server being
// closed meanwhile.
func (s *Server) sleep(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-s.done:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.tb.Logf("smtptest: accept: %v", err)
			if !s.sleep(5 * time.Millisecond) {
				return
			}
			continue
		}
		c := s.track(raw)
		if c == nil {
			return
		}
		s.wg.Add(1)
		go s.setUp(c)
	}
}

// track registers a newly accepted connection. It returns nil, having
// closed raw, if the server is closed.
func (s *Server) track(raw net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = raw.Close()
		return nil
	}
	s.nconns++
	s.open++
	s.hits["CONNECT"]++
	c := newConn(s, raw, s.nconns)
	s.conns[c] = struct{}{}
	s.cond.Broadcast()
	return c
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.open--
		s.cond.Broadcast()
	}
}

// setUp does what happens before the greeting: the TLS handshake of
// implicit TLS and CONNECT faults. It then hands the connection to go-smtp.
func (s *Server) setUp(c *conn) {
	defer s.wg.Done()

	if s.cfg.implicitTLS {
		if err := c.handshake(); err != nil {
			_ = c.Close()
			return
		}
	}

	if f, ok := s.fire("CONNECT", nil); ok {
		if !s.sleep(f.Delay) || f.Drop {
			_ = c.Close()
			return
		}
		if f.Code != 0 {
			_ = c.raw.SetWriteDeadline(time.Now().Add(ioTimeout))
			_, _ = c.cur.Write(f.reply)
			_ = c.Close()
			return
		}
	}

	select {
	case s.incoming.ch <- c:
	case <-s.done:
		_ = c.Close()
	}
}

// chanListener is the net.Listener go-smtp serves: it yields the
// connections setUp hands over.
type chanListener struct {
	addr net.Addr
	ch   chan *conn
	done chan struct{}
	once sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan *conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// tbLogger sends go-smtp's error log to the test log.
type tbLogger struct{ tb testing.TB }

func (l tbLogger) Printf(format string, v ...any) { l.tb.Logf("smtptest: go-smtp: "+format, v...) }
func (l tbLogger) Println(v ...any)               { l.tb.Logf("smtptest: go-smtp: %s", fmt.Sprintln(v...)) }
