package smtptest_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/textproto"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	gmsmtp "github.com/wneessen/go-mail/smtp"

	"github.com/jetmail/jetmail/worker/smtptest"
)

func dial(t *testing.T, s *smtptest.Server) *gmsmtp.Client {
	t.Helper()
	c, err := gmsmtp.Dial(s.Addr())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// send runs one mail transaction; it stops at the first error.
func send(c *gmsmtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt); err != nil {
			return fmt.Errorf("RCPT %s: %w", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return fmt.Errorf("writing body: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

// wantReply checks that err is an SMTP reply with code and text starting
// with prefix.
func wantReply(t *testing.T, err error, code int, prefix string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) {
		t.Fatalf("got error %v, want SMTP reply %d %s", err, code, prefix)
	}
	if te.Code != code || !strings.HasPrefix(te.Msg, prefix) {
		t.Fatalf("got reply %d %q, want %d %q...", te.Code, te.Msg, code, prefix)
	}
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestURL(t *testing.T) {
	t.Parallel()
	plain := smtptest.NewServer(t)
	if got, want := plain.URL(), "smtp://"+plain.Addr()+"?tls=none"; got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
	if !strings.HasPrefix(plain.Addr(), "127.0.0.1:") {
		t.Errorf("Addr() = %q", plain.Addr())
	}
	if plain.CACertPEM() != nil || plain.CertPool() != nil {
		t.Error("server without TLS has a certificate")
	}
	starttls := smtptest.NewServer(t, smtptest.WithTLS(), smtptest.WithAuth("u", "p@ss:/"))
	if got, want := starttls.URL(), "smtp://u:p%40ss%3A%2F@"+starttls.Addr(); got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
	implicit := smtptest.NewServer(t, smtptest.WithImplicitTLS())
	if got, want := implicit.URL(), "smtps://"+implicit.Addr(); got != want {
		t.Errorf("URL() = %q, want %q", got, want)
	}
}

func TestMessagesOnOneConnection(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	c := dial(t, s)

	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("PIPELINING not advertised")
	}
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Error("SMTPUTF8 not advertised")
	}
	if err := send(c, "a@example.com", []string{"x@example.com", "y@example.com"}, "Subject: 1\r\n\r\n.dotted\r\n"); err != nil {
		t.Fatal(err)
	}
	// A second transaction straight after the first, then one after RSET
	// and NOOP, as connection-reusing clients do.
	if err := send(c, "b@example.com", []string{"z@example.com"}, "Subject: 2\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "<>", []string{"w@example.com"}, "Subject: 3\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	msgs := s.Messages()
	if len(msgs) != 3 || s.MessageCount() != 3 {
		t.Fatalf("got %d messages, want 3", len(msgs))
	}
	m := msgs[0]
	if m.From != "a@example.com" || strings.Join(m.To, ",") != "x@example.com,y@example.com" {
		t.Errorf("envelope = %q -> %q", m.From, m.To)
	}
	if got, want := string(m.Data), "Subject: 1\r\n\r\n.dotted\r\n"; got != want {
		t.Errorf("Data = %q, want %q", got, want)
	}
	if msgs[2].From != "" {
		t.Errorf("null sender recorded as %q", msgs[2].From)
	}
	for i, m := range msgs {
		if m.Conn != 1 || m.TLS || m.User != "" || m.Received.IsZero() {
			t.Errorf("message %d: Conn=%d TLS=%v User=%q Received=%v", i, m.Conn, m.TLS, m.User, m.Received)
		}
	}
	// Messages returns copies.
	msgs[0].To[0] = "changed"
	if s.Messages()[0].To[0] != "x@example.com" {
		t.Error("Messages shares memory with the server")
	}
	for cmd, want := range map[string]int{"CONNECT": 1, "EHLO": 1, "MAIL": 3, "rcpt": 4, "DATA": 3, "RSET": 1, "NOOP": 1, "QUIT": 1} {
		if got := s.Hits(cmd); got != want {
			t.Errorf("Hits(%q) = %d, want %d", cmd, got, want)
		}
	}
}

func TestRcptFaultMatch(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "Bad@Example.com", Code: 550, Enhanced: "5.1.1", Message: "no such user"})
	c := dial(t, s)

	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("good@example.com"); err != nil {
		t.Fatal(err)
	}
	wantReply(t, c.Rcpt("bad@example.COM"), 550, "5.1.1 no such user")
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("Subject: x\r\n\r\nx\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "good@example.com" {
		t.Fatalf("messages = %+v", msgs)
	}
	if s.FaultHits() != 1 || s.Hits("RCPT") != 2 {
		t.Errorf("FaultHits = %d, Hits(RCPT) = %d", s.FaultHits(), s.Hits("RCPT"))
	}
}

func TestFaultTimes(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "mail", Times: 2, Code: 451, Enhanced: "4.3.0", Message: "try later"})
	c := dial(t, s)
	for range 2 {
		wantReply(t, c.Mail("a@example.com"), 451, "4.3.0 try later")
	}
	if err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	if s.FaultHits() != 2 || s.Hits("MAIL") != 3 {
		t.Errorf("FaultHits = %d, Hits(MAIL) = %d", s.FaultHits(), s.Hits("MAIL"))
	}

	// Faults are checked in order; a used-up fault lets the next one fire,
	// and ClearFaults removes them all.
	s.AddFault(smtptest.Fault{Cmd: "NOOP", Code: 421})
	wantReply(t, c.Noop(), 421, "4.0.0 Fault injected by smtptest")
	s.ClearFaults()
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
}

func TestDropMidData(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "DATA", Drop: true})
	c := dial(t, s)
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("x@example.com"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 4096)
	_, werr := w.Write([]byte(body))
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("message sent although the connection was dropped")
	}
	if err := s.WaitOpenConnections(ctxTimeout(t), 0); err != nil {
		t.Fatal(err)
	}
	if n := s.MessageCount(); n != 0 || s.FaultHits() != 1 {
		t.Fatalf("MessageCount = %d, FaultHits = %d", n, s.FaultHits())
	}
}

func TestDataFaults(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "DATA", Match: "x@example.com", Times: 1, Code: 452, Enhanced: "4.3.1", Message: "disk full"})
	s.AddFault(smtptest.Fault{Cmd: "DATA-START", Times: 1, Code: 554, Enhanced: "5.5.0"})
	c := dial(t, s)

	err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n")
	wantReply(t, errors.Unwrap(err), 554, "5.5.0")
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	err = send(c, "a@example.com", []string{"y@example.com"}, "y\r\n") // no match
	if err != nil {
		t.Fatal(err)
	}
	err = send(c, "a@example.com", []string{"x@example.com"}, "x\r\n")
	wantReply(t, errors.Unwrap(err), 452, "4.3.1 disk full")
	if err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 2 || msgs[0].To[0] != "y@example.com" || msgs[1].To[0] != "x@example.com" {
		t.Fatalf("messages = %+v", msgs)
	}
	if s.FaultHits() != 2 || s.Hits("DATA") != 4 {
		t.Errorf("FaultHits = %d, Hits(DATA) = %d", s.FaultHits(), s.Hits("DATA"))
	}
}

func TestCommandFaults(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "CONNECT", Times: 1, Code: 421, Enhanced: "4.3.2", Message: "busy"})
	s.AddFault(smtptest.Fault{Cmd: "EHLO", Match: "bad.example", Code: 550})
	s.AddFault(smtptest.Fault{Cmd: "RSET", Times: 1, Code: 500, Message: "line one\nline two"})
	s.AddFault(smtptest.Fault{Cmd: "QUIT", Drop: true})

	_, err := gmsmtp.Dial(s.Addr())
	wantReply(t, err, 421, "4.3.2 busy")

	c := dial(t, s)
	if err := c.Hello("bad.example"); err == nil {
		t.Fatal("EHLO and HELO accepted")
	}
	if s.Hits("EHLO") != 1 || s.Hits("HELO") != 1 {
		t.Errorf("Hits(EHLO) = %d, Hits(HELO) = %d", s.Hits("EHLO"), s.Hits("HELO"))
	}
	_ = c.Close()

	c = dial(t, s)
	// Like go-smtp, the enhanced code is on the last line only.
	wantReply(t, c.Reset(), 500, "line one\n5.0.0 line two")
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err == nil {
		t.Fatal("QUIT answered although the fault drops the connection")
	}
	if err := s.WaitOpenConnections(ctxTimeout(t), 0); err != nil {
		t.Fatal(err)
	}
	if got := s.FaultHits(); got != 5 {
		t.Errorf("FaultHits = %d, want 5", got)
	}
}

func TestDelay(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "NOOP", Times: 1, Delay: 100 * time.Millisecond})
	c := dial(t, s)
	start := time.Now()
	if err := c.Noop(); err != nil { // a Delay without Code only stalls
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("NOOP answered after %v, want at least 100ms", d)
	}
}

func TestCloseInterruptsDelay(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "MAIL", Match: "a@example.com", Delay: time.Hour, Code: 451})
	s.AddFault(smtptest.Fault{Cmd: "DATA", Delay: time.Hour})
	c1, c2 := dial(t, s), dial(t, s)
	errs := make(chan error, 2)
	go func() { errs <- c1.Mail("a@example.com") }()
	go func() { errs <- send(c2, "b@example.com", []string{"x@example.com"}, "x\r\n") }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitFaultHits(ctx, 2); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	for range 2 {
		if err := <-errs; err == nil {
			t.Error("stalled command succeeded")
		}
	}
	if s.OpenConnections() != 0 || s.MessageCount() != 0 {
		t.Errorf("after Close: OpenConnections = %d, MessageCount = %d", s.OpenConnections(), s.MessageCount())
	}
	s.Close() // idempotent
	if _, err := s.WaitMessages(context.Background(), 1); !errors.Is(err, smtptest.ErrClosed) {
		t.Errorf("WaitMessages on closed server: %v", err)
	}
}

func tlsConfig(pemBytes []byte) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

func TestStartTLS(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, smtptest.WithTLS())
	pemFile, err := os.ReadFile(s.CAFile(t))
	if err != nil || string(pemFile) != string(s.CACertPEM()) {
		t.Fatalf("CAFile content differs from CACertPEM (%v)", err)
	}

	c := dial(t, s)
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not advertised")
	}
	if err := c.StartTLS(tlsConfig(pemFile)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised over TLS")
	}
	if err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Fatalf("messages = %+v", msgs)
	}

	// Faults apply over TLS too.
	s.AddFault(smtptest.Fault{Cmd: "RCPT", Times: 1, Code: 450, Enhanced: "4.2.0"})
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	wantReply(t, c.Rcpt("x@example.com"), 450, "4.2.0")

	// A client that does not trust the certificate fails to verify it.
	c = dial(t, s)
	if err := c.StartTLS(&tls.Config{ServerName: "127.0.0.1", RootCAs: x509.NewCertPool()}); err == nil {
		t.Fatal("STARTTLS verified a certificate from an unknown authority")
	}
	// The pool from CertPool verifies "localhost" too.
	c = dial(t, s)
	if err := c.StartTLS(&tls.Config{ServerName: "localhost", RootCAs: s.CertPool()}); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, smtptest.WithImplicitTLS())
	tc, err := tls.Dial("tcp", s.Addr(), tlsConfig(s.CACertPEM()))
	if err != nil {
		t.Fatal(err)
	}
	c, err := gmsmtp.NewClient(tc, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised over implicit TLS")
	}
	if err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if msgs := s.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Fatalf("messages = %+v", msgs)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, smtptest.WithAuth("user", "secret"))

	c := dial(t, s)
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH extension = %v %q", ok, mechs)
	}
	wantReply(t, c.Mail("a@example.com"), 530, "5.7.0")
	wantReply(t, c.Auth(gmsmtp.PlainAuth("", "user", "wrong", "127.0.0.1", false)), 535, "5.7.8")

	c = dial(t, s)
	wantReply(t, c.Auth(gmsmtp.LoginAuth("user", "wrong", "127.0.0.1", false)), 535, "5.7.8")

	c = dial(t, s)
	if err := c.Auth(gmsmtp.PlainAuth("", "user", "secret", "127.0.0.1", false)); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "a@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}

	c = dial(t, s)
	if err := c.Auth(gmsmtp.LoginAuth("user", "secret", "127.0.0.1", false)); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "b@example.com", []string{"x@example.com"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}

	msgs := s.Messages()
	if len(msgs) != 2 || msgs[0].User != "user" || msgs[1].User != "user" {
		t.Fatalf("messages = %+v", msgs)
	}
	// SASL responses are not counted as commands.
	if got := s.Hits("AUTH"); got != 4 {
		t.Errorf("Hits(AUTH) = %d, want 4", got)
	}

	// An AUTH fault rejects whatever the credentials.
	s.AddFault(smtptest.Fault{Cmd: "AUTH", Match: "plain", Code: 454, Enhanced: "4.7.0"})
	c = dial(t, s)
	wantReply(t, c.Auth(gmsmtp.PlainAuth("", "user", "secret", "127.0.0.1", false)), 454, "4.7.0")
}

func TestConnectionCounts(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	var clients []*gmsmtp.Client
	for range 3 {
		clients = append(clients, dial(t, s))
	}
	// The greeting is sent after the accept, so Dial returning means it
	// has been counted.
	if s.Connections() != 3 || s.OpenConnections() != 3 || s.Hits("CONNECT") != 3 {
		t.Fatalf("Connections = %d, OpenConnections = %d", s.Connections(), s.OpenConnections())
	}
	if err := clients[0].Quit(); err != nil {
		t.Fatal(err)
	}
	_ = clients[1].Close() // without QUIT
	if err := s.WaitOpenConnections(ctxTimeout(t), 1); err != nil {
		t.Fatal(err)
	}
	if s.Connections() != 3 {
		t.Errorf("Connections = %d, want 3", s.Connections())
	}
}

func TestConcurrentSessions(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "reject@example.com", Code: 550, Enhanced: "5.1.1"})
	const conns, perConn = 8, 5
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			c, err := gmsmtp.Dial(s.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for j := range perConn {
				from := fmt.Sprintf("c%d@example.com", i)
				if err := send(c, from, []string{fmt.Sprintf("m%d@example.com", j)}, "x\r\n"); err != nil {
					t.Error(err)
					return
				}
				if err := c.Mail(from); err != nil {
					t.Error(err)
					return
				}
				if err := c.Rcpt("reject@example.com"); err == nil {
					t.Error("RCPT not rejected")
				}
				if err := c.Reset(); err != nil {
					t.Error(err)
					return
				}
			}
			_ = c.Quit()
		})
	}
	msgs, err := s.WaitMessages(ctxTimeout(t), conns*perConn)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	perConnNum := map[int]int{}
	senders := map[int]string{}
	for _, m := range msgs {
		perConnNum[m.Conn]++
		if prev, ok := senders[m.Conn]; ok && prev != m.From {
			t.Errorf("connection %d carried messages from %s and %s", m.Conn, prev, m.From)
		}
		senders[m.Conn] = m.From
	}
	if len(perConnNum) != conns {
		t.Errorf("messages came over %d connections, want %d", len(perConnNum), conns)
	}
	if s.FaultHits() != conns*perConn {
		t.Errorf("FaultHits = %d", s.FaultHits())
	}
}

func TestWaitMessagesContext(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.WaitMessages(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitMessages = %v", err)
	}
}

func TestMaxMessageBytes(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t, smtptest.WithMaxMessageBytes(100))
	c := dial(t, s)
	if _, size := c.Extension("SIZE"); size != "100" {
		t.Errorf("SIZE = %q", size)
	}
	err := send(c, "a@example.com", []string{"x@example.com"}, strings.Repeat("x", 200)+"\r\n")
	wantReply(t, errors.Unwrap(err), 552, "5.3.4")
	// The connection is still usable.
	if err := send(c, "a@example.com", []string{"x@example.com"}, "small\r\n"); err != nil {
		t.Fatal(err)
	}
	if s.MessageCount() != 1 {
		t.Errorf("MessageCount = %d", s.MessageCount())
	}
}

// rawSession talks to the server without a client library, to pipeline
// and to use BDAT.
type rawSession struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func rawDial(t *testing.T, s *smtptest.Server) *rawSession {
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	rs := &rawSession{t: t, nc: nc, r: bufio.NewReader(nc)}
	rs.expect("220 ")
	return rs
}

func (rs *rawSession) write(s string) {
	if _, err := rs.nc.Write([]byte(s)); err != nil {
		rs.t.Fatal(err)
	}
}

// expect reads one reply, skipping continuation lines, and checks that
// its last line starts with prefix.
func (rs *rawSession) expect(prefix string) {
	rs.t.Helper()
	for {
		line, err := rs.r.ReadString('\n')
		if err != nil {
			rs.t.Fatalf("reading reply, want %q: %v", prefix, err)
		}
		if len(line) >= 4 && line[3] == '-' {
			continue
		}
		if !strings.HasPrefix(line, prefix) {
			rs.t.Fatalf("got reply %q, want %q", line, prefix)
		}
		return
	}
}

func TestPipeliningKeepsReplyOrder(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "b@example.com", Code: 550, Enhanced: "5.1.1"})
	rs := rawDial(t, s)
	rs.write("EHLO client\r\n")
	rs.expect("250 ")
	rs.write("MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
	for _, want := range []string{"250 2.0.0 Roger", "250 2.0.0 I'll make sure <a@", "550 5.1.1", "250 2.0.0 I'll make sure <c@", "354 "} {
		rs.expect(want)
	}
	rs.write("Subject: x\r\n\r\n..leading dot\r\n.\r\nRSET\r\nNOOP\r\n")
	rs.expect("250 2.0.0 OK")
	rs.expect("250 2.0.0 Session reset")
	rs.expect("250 2.0.0 I have successfully done nothing")

	m := s.Messages()
	if len(m) != 1 || strings.Join(m[0].To, ",") != "a@example.com,c@example.com" || string(m[0].Data) != "Subject: x\r\n\r\n.leading dot\r\n" {
		t.Fatalf("messages = %+v", m)
	}
}

func TestBDAT(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "DATA", Times: 1, Code: 451})
	rs := rawDial(t, s)
	rs.write("EHLO client\r\n")
	rs.expect("250 ")
	for _, want := range []string{"451 4.0.0", "250 2.0.0 OK"} {
		rs.write("MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n")
		rs.expect("250 ")
		rs.expect("250 ")
		rs.write("BDAT 12\r\nSubject: x\r\nBDAT 7 LAST\r\n\r\nbody\n")
		rs.expect("250 2.0.0 Continue")
		rs.expect(want)
	}
	m := s.Messages()
	if len(m) != 1 || string(m[0].Data) != "Subject: x\r\n\r\nbody\n" {
		t.Fatalf("messages = %+v", m)
	}
	if s.Hits("BDAT") != 4 {
		t.Errorf("Hits(BDAT) = %d", s.Hits("BDAT"))
	}
}

// TestCloseStopsGoroutines runs without t.Parallel so that no other
// server's goroutines are around.
func TestCloseStopsGoroutines(t *testing.T) {
	s := smtptest.NewServer(t, smtptest.WithTLS())
	s.AddFault(smtptest.Fault{Cmd: "RCPT", Delay: time.Hour})
	s.AddFault(smtptest.Fault{Cmd: "CONNECT", Times: 1, Delay: time.Hour})

	stalled, err := net.Dial("tcp", s.Addr()) // stalls before the greeting
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitFaultHits(ctx, 1); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s)
	if err := c.StartTLS(&tls.Config{ServerName: "127.0.0.1", RootCAs: s.CertPool()}); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@example.com"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- c.Rcpt("x@example.com") }()
	if err := s.WaitFaultHits(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	<-done

	deadline := time.Now().Add(time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		leaked := ""
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "emersion/go-smtp") || strings.Contains(g, "worker/smtptest.(*") {
				leaked = g
			}
		}
		if leaked == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutine still running after Close:\n%s", leaked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFaultProbability(t *testing.T) {
	t.Parallel()
	s := smtptest.NewServer(t)
	s.AddFault(smtptest.Fault{Cmd: "NOOP", Probability: 0.3, Code: 451, Message: "sometimes"})
	// A fault passed over by chance lets the next one fire; Times still
	// caps the firings of a random fault.
	s.AddFault(smtptest.Fault{Cmd: "NOOP", Probability: 0.5, Times: 20, Code: 452, Message: "next"})
	c := dial(t, s)
	const n = 1000
	var first, second int
	for range n {
		err := c.Noop()
		var te *textproto.Error
		switch {
		case err == nil:
		case errors.As(err, &te) && te.Code == 451:
			first++
		case errors.As(err, &te) && te.Code == 452:
			second++
		default:
			t.Fatalf("NOOP: %v", err)
		}
	}
	// 1000 draws at 0.3: mean 300, standard deviation 14.5.
	if first < 200 || first > 400 {
		t.Errorf("the 30%% fault fired %d times in %d", first, n)
	}
	if second != 20 {
		t.Errorf("the 50%% fault with Times 20 fired %d times", second)
	}
	if s.FaultHits() != first+second || s.Hits("NOOP") != n {
		t.Errorf("FaultHits = %d, Hits(NOOP) = %d; want %d and %d", s.FaultHits(), s.Hits("NOOP"), first+second, n)
	}
}

// errRecorder is a testing.TB that records Errorf calls instead of failing.
type errRecorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *errRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func TestFaultProbabilityOutOfRange(t *testing.T) {
	t.Parallel()
	rec := &errRecorder{TB: t}
	s := smtptest.NewServer(rec)
	for _, p := range []float64{-0.1, 1.5, math.NaN()} {
		s.AddFault(smtptest.Fault{Cmd: "NOOP", Probability: p, Code: 451})
	}
	s.AddFault(smtptest.Fault{Cmd: "NOOP", Probability: 1, Times: 1, Code: 452})
	c := dial(t, s)
	wantReply(t, c.Noop(), 452, "4.0.0")
	if err := c.Noop(); err != nil {
		t.Fatalf("an invalid fault was added: %v", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.errs) != 3 || !strings.Contains(rec.errs[0], "Probability") {
		t.Errorf("errors reported: %q, want 3 about Probability", rec.errs)
	}
}
