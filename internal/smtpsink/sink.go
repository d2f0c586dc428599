// Package smtpsink is a minimal, fast SMTP server that accepts every
// message and only counts it, like Postfix's smtp-sink: the SMTP limit that
// `jetmail bench` compares jetmail with, and a fast relay for benchmarks
// and soak tests. Unlike package smtptest it is not a test double (it
// records nothing and cannot fail on command) and does not import package
// testing, so the jetmail binary can run it.
package smtpsink

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Sink is a minimal, fast SMTP server that accepts every message and only
// counts it, like Postfix's smtp-sink: the ceiling that benchmarks compare
// jetmail with. It speaks enough ESMTP for jetmail's client (EHLO with
// PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES and CHUNKING; MAIL,
// RCPT, DATA, BDAT, RSET, NOOP, QUIT), answers pipelined commands in order, and flushes its
// replies only when the client has nothing more buffered, as a real
// pipelining server does. It is safe for concurrent use.
type Sink struct {
	ln       net.Listener
	messages atomic.Int64
	bytes    atomic.Int64
	conns    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	open     map[net.Conn]struct{}
	closed   bool
}

// Start listens on addr ("127.0.0.1:0" for a free port) and serves
// until Close.
func Start(addr string) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Sink{ln: ln, open: map[net.Conn]struct{}{}}
	s.wg.Go(s.accept)
	return s, nil
}

// Addr returns the listening address.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// URL returns an smtp URL for jetmail ("smtp://addr?tls=none").
func (s *Sink) URL() string { return "smtp://" + s.Addr() + "?tls=none" }

// Messages returns the number of messages accepted so far.
func (s *Sink) Messages() int64 { return s.messages.Load() }

// Bytes returns the number of message bytes accepted so far.
func (s *Sink) Bytes() int64 { return s.bytes.Load() }

// Connections returns the number of connections accepted so far.
func (s *Sink) Connections() int64 { return s.conns.Load() }

// Close stops listening, closes every connection and waits for them.
func (s *Sink) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	s.wg.Wait()
}

func (s *Sink) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.conns.Add(1)
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serve(c)
		})
	}
}

var errQuit = errors.New("quit")

func (s *Sink) serve(c net.Conn) {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 16<<10)
	reply := func(line string) error {
		_, err := w.WriteString(line + "\r\n")
		if err != nil {
			return err
		}
		if r.Buffered() == 0 { // nothing pipelined behind this command
			return w.Flush()
		}
		return nil
	}
	if err := reply("220 sink ESMTP"); err != nil {
		return
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Minute))
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(string(bytes.TrimSpace(firstWord(line))))
		switch verb {
		case "EHLO":
			err = reply("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SIZE 104857600")
		case "HELO":
			err = reply("250 sink")
		case "MAIL", "RCPT", "RSET", "NOOP":
			err = reply("250 2.0.0 Ok")
		case "DATA":
			if err = reply("354 End data with <CR><LF>.<CR><LF>"); err != nil {
				return
			}
			if err = w.Flush(); err != nil {
				return
			}
			n, derr := readData(r)
			if derr != nil {
				return
			}
			s.messages.Add(1)
			s.bytes.Add(n)
			err = reply("250 2.0.0 Ok: queued")
		case "BDAT": // RFC 3030: "BDAT <size> [LAST]", then size bytes
			fields := strings.Fields(string(line))
			size, perr := strconv.ParseInt(fields[min(1, len(fields)-1)], 10, 64)
			if len(fields) < 2 || perr != nil || size < 0 {
				err = reply("501 5.5.4 Syntax: BDAT size [LAST]")
				break
			}
			if _, err = io.CopyN(io.Discard, r, size); err != nil {
				return
			}
			s.bytes.Add(size)
			if len(fields) > 2 && strings.EqualFold(fields[2], "LAST") {
				s.messages.Add(1)
				err = reply("250 2.0.0 Ok: queued")
			} else {
				err = reply("250 2.0.0 Ok")
			}
		case "QUIT":
			_ = reply("221 2.0.0 Bye")
			_ = w.Flush()
			err = errQuit
		default:
			err = reply("502 5.5.2 Error: command not recognized")
		}
		if err != nil {
			return
		}
	}
}

func firstWord(line []byte) []byte {
	line = bytes.TrimLeft(line, " ")
	if i := bytes.IndexAny(line, " :\r\n"); i >= 0 {
		return line[:i]
	}
	return line
}

// readData consumes a dot-terminated message body and returns its size.
func readData(r *bufio.Reader) (int64, error) {
	var n int64
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				return n, io.ErrUnexpectedEOF
			}
			return n, err
		}
		if err == nil && (bytes.Equal(line, []byte(".\r\n")) || bytes.Equal(line, []byte(".\n"))) {
			return n, nil
		}
		n += int64(len(line))
	}
}
