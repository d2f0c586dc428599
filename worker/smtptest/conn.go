package smtptest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Reading modes of a conn.
const (
	modeCmd   = iota // the next line is a command
	modeSASL         // the next line answers an AUTH challenge
	modeData         // reading a DATA body
	modeChunk        // reading a BDAT chunk
)

// States of the end-of-data detector; the same machine as go-smtp's
// dataReader, so that both agree on where a body ends.
const (
	dataBeginLine = iota
	dataDot
	dataDotCR
	dataCR
	dataText
)

// conn is the net.Conn go-smtp serves. It sits between go-smtp and the
// socket, or the TLS session when there is one, and hands go-smtp one
// command line per Read. go-smtp reads again only once it has answered
// everything it was given, so conn can act on each command in order even
// when the client pipelines: count it, apply faults, and handle STARTTLS
// itself. On the way out it watches the replies to know when a DATA body
// or an AUTH response follows, and adds STARTTLS to the EHLO reply.
//
// Read and Write are called only by the goroutine serving the connection
// (setUp before that); Close may be called by any goroutine.
type conn struct {
	srv       *Server
	raw       net.Conn
	id        int
	closed    atomic.Bool
	closeOnce sync.Once

	cur      net.Conn // raw, or the TLS session on top of it
	br       *bufio.Reader
	isTLS    bool
	needHelo bool // after STARTTLS, until the next EHLO
	sess     *session

	mode      int
	dataState int
	chunkLeft int64
	midLine   bool // the last line handed over was incomplete
	pending   []byte
	buf       []byte
	lastCmd   string // the last command handed to go-smtp

	wbuf      []byte
	ehloLines []string
}

func newConn(s *Server, raw net.Conn, id int) *conn {
	c := &conn{srv: s, raw: raw, cur: raw, id: id}
	c.br = bufio.NewReader(raw)
	return c
}

// handshake runs the server side of a TLS handshake on the connection.
func (c *conn) handshake() error {
	tc := tls.Server(c.raw, c.srv.tlsConfig)
	_ = c.raw.SetDeadline(time.Now().Add(ioTimeout))
	err := tc.Handshake()
	_ = c.raw.SetDeadline(time.Time{})
	if err != nil {
		return err
	}
	c.cur = tc
	c.br = bufio.NewReader(tc)
	c.isTLS = true
	return nil
}

func (c *conn) Read(b []byte) (int, error) {
	for len(c.pending) == 0 {
		if err := c.advance(); err != nil {
			if c.closed.Load() {
				// Closed on purpose: let go-smtp end the session quietly.
				return 0, io.EOF
			}
			return 0, err
		}
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// advance reads from the client and sets pending to what go-smtp should
// read next. It may answer commands itself, leaving pending empty.
func (c *conn) advance() error {
	switch c.mode {
	case modeData:
		return c.advanceData()
	case modeChunk:
		return c.advanceChunk()
	}

	line, err := c.br.ReadSlice('\n')
	if err != nil && err != bufio.ErrBufferFull {
		return err
	}
	complete := err == nil
	wasMidLine := c.midLine
	c.midLine = !complete
	c.pending = append(c.buf[:0], line...)
	c.buf = c.pending
	if wasMidLine || !complete {
		// Part of an overlong line, which go-smtp rejects.
		return nil
	}
	if c.mode == modeSASL {
		c.mode = modeCmd
		return nil
	}
	return c.command(string(line))
}

// command acts on a command line; it leaves pending set if go-smtp is to
// process the line.
func (c *conn) command(line string) error {
	verb, arg, ok := parseCmd(line)
	if !ok {
		// go-smtp answers with a syntax error.
		c.lastCmd = ""
		return nil
	}
	c.srv.hit(verb)

	key := verb
	var match func(string) bool
	switch verb {
	case "EHLO", "HELO":
		key = "EHLO"
		host, _, _ := strings.Cut(arg, " ")
		match = matchAny(host)
	case "AUTH":
		mech, _, _ := strings.Cut(arg, " ")
		match = matchAny(mech)
	case "MAIL":
		if addr, ok := pathArg(arg, "FROM:"); ok {
			match = matchAny(addr)
		}
	case "RCPT":
		if addr, ok := pathArg(arg, "TO:"); ok {
			match = matchAny(addr)
		}
	case "DATA":
		key = "DATA-START"
		if c.sess != nil {
			from, rcpts := c.sess.envelope()
			match = matchAny(append(rcpts, from)...)
		}
	}
	if f, ok := c.srv.fire(key, match); ok {
		handled, err := c.applyFault(f)
		if handled || err != nil {
			c.pending = nil
			return err
		}
	}

	switch verb {
	case "STARTTLS":
		if c.srv.cfg.startTLS || c.isTLS {
			c.pending = nil
			return c.startTLS()
		}
	case "EHLO", "HELO":
		c.needHelo = false
	case "NOOP", "RSET", "QUIT", "VRFY":
	default:
		if c.needHelo {
			c.pending = nil
			return c.reply("502 5.5.1 Please introduce yourself first.\r\n")
		}
		if verb == "BDAT" {
			c.startChunk(arg)
		}
	}
	c.lastCmd = verb
	return nil
}

// applyFault stalls and then drops the connection or replies for f. It
// reports whether the command was answered.
func (c *conn) applyFault(f *faultState) (bool, error) {
	if !c.srv.sleep(f.Delay) || f.Drop {
		_ = c.Close()
		return false, io.EOF
	}
	if f.Code == 0 {
		return false, nil
	}
	if err := c.reply(string(f.reply)); err != nil {
		return false, err
	}
	return true, nil
}

// reply writes a reply go-smtp knows nothing about and renews the read
// deadline go-smtp set before its Read.
func (c *conn) reply(s string) error {
	_ = c.raw.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.cur, s); err != nil {
		return err
	}
	_ = c.raw.SetReadDeadline(time.Now().Add(ioTimeout))
	return nil
}

// startTLS handles STARTTLS, which go-smtp never sees.
func (c *conn) startTLS() error {
	if c.isTLS {
		return c.reply("502 5.5.1 Already running in TLS\r\n")
	}
	if err := c.reply("220 2.0.0 Ready to start TLS\r\n"); err != nil {
		return err
	}
	// Anything the client sent after STARTTLS in the clear is discarded
	// with the old reader, as RFC 3207 requires.
	if err := c.handshake(); err != nil {
		_ = c.Close()
		return io.EOF
	}
	_ = c.raw.SetReadDeadline(time.Now().Add(ioTimeout))
	c.needHelo = true
	if c.sess != nil {
		c.sess.forgetAuth()
	}
	c.lastCmd = "STARTTLS"
	return nil
}

// startChunk prepares to pass on the chunk that follows a BDAT command,
// in the cases where go-smtp reads it.
func (c *conn) startChunk(arg string) {
	args := strings.Fields(arg)
	if len(args) == 0 || len(args) > 2 || (len(args) == 2 && !strings.EqualFold(args[1], "LAST")) {
		return
	}
	size, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil || size == 0 {
		return
	}
	c.mode = modeChunk
	c.chunkLeft = int64(size)
}

func (c *conn) advanceChunk() error {
	n := min(c.chunkLeft, 32<<10)
	if cap(c.buf) < int(n) {
		c.buf = make([]byte, n)
	}
	k, err := c.br.Read(c.buf[:n])
	c.chunkLeft -= int64(k)
	c.pending = c.buf[:k]
	if c.chunkLeft == 0 {
		c.mode = modeCmd
	}
	if k > 0 {
		return nil
	}
	return err
}

// advanceData hands over body bytes up to and including the end-of-data
// line.
func (c *conn) advanceData() error {
	if _, err := c.br.Peek(1); err != nil {
		return err
	}
	b, _ := c.br.Peek(c.br.Buffered())
	n, end := 0, false
	for n < len(b) && !end {
		ch := b[n]
		n++
		switch c.dataState {
		case dataBeginLine:
			switch ch {
			case '.':
				c.dataState = dataDot
			case '\r':
				c.dataState = dataCR
			default:
				c.dataState = dataText
			}
		case dataDot:
			if ch == '\r' {
				c.dataState = dataDotCR
			} else {
				c.dataState = dataText
			}
		case dataDotCR:
			if ch == '\n' {
				end = true
			} else {
				c.dataState = dataText
			}
		case dataCR:
			if ch == '\n' {
				c.dataState = dataBeginLine
			} else {
				c.dataState = dataText
			}
		case dataText:
			if ch == '\r' {
				c.dataState = dataCR
			}
		}
	}
	c.pending = append(c.buf[:0], b[:n]...)
	c.buf = c.pending
	_, _ = c.br.Discard(n)
	if end {
		c.mode = modeCmd
		c.dataState = dataBeginLine
	}
	return nil
}

func (c *conn) Write(b []byte) (int, error) {
	c.wbuf = append(c.wbuf, b...)
	var out []byte
	for {
		i := bytes.IndexByte(c.wbuf, '\n')
		if i < 0 {
			break
		}
		out = c.replyLine(out, c.wbuf[:i+1])
		c.wbuf = c.wbuf[i+1:]
	}
	// go-smtp writes whole lines, so this is normally empty.
	c.wbuf = append([]byte(nil), c.wbuf...)
	if len(out) > 0 {
		if _, err := c.cur.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// replyLine looks at one line of a reply from go-smtp and appends what is
// to be sent to out.
func (c *conn) replyLine(out, line []byte) []byte {
	if len(line) < 4 {
		return append(out, line...)
	}
	code, sep := string(line[:3]), line[3]
	switch {
	case c.lastCmd == "EHLO" && code == "250":
		// Hold the reply back to add STARTTLS to it.
		c.ehloLines = append(c.ehloLines, strings.TrimRight(string(line[4:]), "\r\n"))
		if sep == '-' {
			return out
		}
		lines := c.ehloLines
		c.ehloLines = nil
		if c.srv.cfg.startTLS && !c.isTLS {
			lines = append(lines, "STARTTLS")
		}
		for i, l := range lines {
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			out = append(out, "250"+sep+l+"\r\n"...)
		}
		return out
	case c.lastCmd == "DATA" && code == "354":
		c.mode = modeData
		c.dataState = dataBeginLine
	case c.lastCmd == "AUTH" && code == "334":
		c.mode = modeSASL
	}
	return append(out, line...)
}

func (c *conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		err = c.raw.Close()
		c.srv.untrack(c)
	})
	return err
}

func (c *conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// parseCmd splits a command line the way go-smtp does, so that both see
// the same command. It reports false for lines go-smtp rejects.
func parseCmd(line string) (verb, arg string, ok bool) {
	line = strings.TrimRight(line, "\r\n")
	switch {
	case len(line) >= 8 && strings.EqualFold(line[:8], "STARTTLS"):
		return "STARTTLS", "", true
	case len(line) < 4 || len(line) == 5:
		return "", "", false
	case len(line) == 4:
		return strings.ToUpper(line), "", true
	case line[4] != ' ':
		return "", "", false
	}
	return strings.ToUpper(line[:4]), strings.TrimSpace(line[5:]), true
}
