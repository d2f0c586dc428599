package smtptest

import (
	"errors"
	"io"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

var (
	errAuthRequired = &smtp.SMTPError{
		Code:         530,
		EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message:      "Authentication required",
	}
	errAuthNotOffered = &smtp.SMTPError{
		Code:         502,
		EnhancedCode: smtp.EnhancedCode{5, 5, 1},
		Message:      "AUTH not offered",
	}
	errDropped = errors.New("smtptest: connection dropped by fault")
)

// backend is the go-smtp backend of a Server.
type backend struct{ s *Server }

// NewSession is called by go-smtp at the first EHLO or HELO of a
// connection (not when it is accepted).
func (b backend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	c, ok := sc.Conn().(*conn)
	if !ok {
		return nil, errors.New("smtptest: unexpected connection type")
	}
	sess := &session{c: c}
	c.sess = sess
	return sess, nil
}

// session is the go-smtp session of a connection. go-smtp calls its
// methods from the connection's goroutine, except Data for BDAT, which it
// calls from a goroutine of its own; mu guards the fields Data reads.
type session struct {
	c *conn

	mu     sync.Mutex
	from   string
	rcpts  []string
	authed bool
	user   string
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) envelope() (string, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.from, append([]string(nil), s.rcpts...)
}

func (s *session) forgetAuth() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authed = false
	s.user = ""
}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from = ""
	s.rcpts = nil
}

func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c.srv.cfg.auth && !s.authed {
		return errAuthRequired
	}
	s.from = from
	s.rcpts = nil
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	srv := s.c.srv
	s.mu.Lock()
	m := Message{
		From: s.from,
		To:   append([]string(nil), s.rcpts...),
		Conn: s.c.id,
		TLS:  s.c.isTLS,
		User: s.user,
	}
	s.mu.Unlock()

	f, fired := srv.fire("DATA", matchAny(append(m.To, m.From)...))
	if fired && f.Drop {
		// Take in part of the body, then hang up.
		var buf [512]byte
		_, _ = r.Read(buf[:])
		srv.sleep(f.Delay)
		_ = s.c.Close()
		return errDropped
	}

	data, err := io.ReadAll(r)
	if err != nil {
		return err // ErrDataTooLarge becomes 552 5.3.4
	}
	if fired {
		if !srv.sleep(f.Delay) {
			_ = s.c.Close()
			return errDropped
		}
		if f.Code != 0 {
			return f.smtp
		}
	}
	m.Data = data
	srv.record(m)
	return nil
}

func (s *session) AuthMechanisms() []string {
	if !s.c.srv.cfg.auth {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.c.srv.cfg.auth {
		return nil, errAuthNotOffered
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return smtp.ErrAuthFailed
			}
			return s.login(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{login: s.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) login(user, pass string) error {
	cfg := s.c.srv.cfg
	if user != cfg.user || pass != cfg.pass {
		return smtp.ErrAuthFailed // 535 5.7.8
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authed = true
	s.user = user
	return nil
}

// loginServer is the server side of the LOGIN mechanism, which go-sasl
// no longer provides.
type loginServer struct {
	login func(user, pass string) error
	step  int
	user  string
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		if len(response) > 0 { // initial response: the user name
			l.user = string(response)
			l.step = 2
			return []byte("Password:"), false, nil
		}
		l.step = 1
		return []byte("Username:"), false, nil
	case 1:
		l.user = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.login(l.user, string(response))
	}
	return nil, false, errors.New("unexpected LOGIN response")
}
