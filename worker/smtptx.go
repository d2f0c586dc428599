package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// transaction is one mail transaction on a session: MAIL, RCPT for each
// recipient, DATA, the message and the final reply, then RSET if it
// failed. It is the one SMTP engine of jetmail: with PIPELINING (RFC 2920)
// the commands go out in one write and their replies are read in order;
// without it each command is flushed and answered before the next, and
// the transaction stops at the first failure. Both ways send the same
// commands with the same parameters, renew the same deadlines and decide
// the same outcome from the same replies; pipelining only decides when to
// flush.
//
// Timeout bounds each command's reply and each buffer-full of the message
// (RFC 5321 §4.5.3.2 times each step, not the transaction). Cancelling the
// transaction's context interrupts any blocked read or write.
//
// A session is healthy afterwards, and goes back to the pool, only if
// every reply was read in order, RSET succeeded after a failure, and the
// context was not cancelled meanwhile; otherwise it is closed.
type transaction struct {
	s         *session
	t         *textproto.Conn
	timeout   time.Duration
	pipelined bool
	chunked   bool // BDAT instead of DATA (pipelined sessions only)
	ctx       context.Context
	stop      func() bool

	mu        sync.Mutex // guards cancelled and the deadline
	cancelled bool
	broken    bool // out of step with the server, or the connection failed
}

// transaction starts a transaction on s for a message sent under ctx.
func (p *smtpPool) transaction(ctx context.Context, s *session) *transaction {
	tx := &transaction{
		s: s, t: s.c.Text, timeout: p.cfg.Timeout, ctx: ctx,
		pipelined: s.pipelining && !p.cfg.NoPipelining,
	}
	tx.chunked = tx.pipelined && s.chunking && !p.cfg.NoChunking
	tx.stop = context.AfterFunc(ctx, func() {
		tx.mu.Lock()
		defer tx.mu.Unlock()
		tx.cancelled = true
		_ = s.conn.SetDeadline(time.Unix(1, 0))
	})
	return tx
}

// close ends the watch on the context; call it when run has returned.
func (tx *transaction) close() { tx.stop() }

// healthy reports whether the session can carry another transaction.
func (tx *transaction) healthy() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return !tx.broken && !tx.cancelled
}

// renew moves the deadline on by Timeout, unless the context was
// cancelled, in which case it returns the context's cause and never undoes
// the cancellation's deadline.
func (tx *transaction) renew() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.cancelled {
		return context.Cause(tx.ctx)
	}
	return tx.s.conn.SetDeadline(time.Now().Add(tx.timeout))
}

// fail marks the session as unusable and returns err.
func (tx *transaction) fail(err error) error {
	tx.mu.Lock()
	tx.broken = true
	tx.mu.Unlock()
	return err
}

// command queues one command line; without pipelining it is flushed at
// once.
func (tx *transaction) command(line string) error {
	if _, err := tx.t.W.WriteString(line + "\r\n"); err != nil {
		return tx.fail(err)
	}
	if !tx.pipelined {
		return tx.flush()
	}
	return nil
}

func (tx *transaction) flush() error {
	if tx.t.W.Buffered() == 0 {
		return nil
	}
	if err := tx.renew(); err != nil {
		return tx.fail(err)
	}
	if err := tx.t.W.Flush(); err != nil {
		return tx.fail(err)
	}
	return nil
}

// reply flushes what is queued and reads the next reply, which must have
// code expect (one digit or more: 25 takes 250 and 251). An error that is
// not a reply leaves the session out of step.
func (tx *transaction) reply(expect int) (string, error) {
	if err := tx.flush(); err != nil {
		return "", err
	}
	if err := tx.renew(); err != nil {
		return "", tx.fail(err)
	}
	_, msg, err := tx.t.ReadResponse(expect)
	if err != nil && !isReply(err) {
		return "", tx.fail(err)
	}
	return msg, err
}

// reset ends a failed transaction with RSET so that the session can carry
// the next one. A server that answered 354 to DATA although the
// transaction cannot go ahead first gets an empty message, ended at once
// (it has no recipient to deliver it to).
func (tx *transaction) reset(got354 bool) {
	if got354 {
		if _, err := tx.t.W.WriteString(".\r\n"); err != nil {
			tx.fail(err)
			return
		}
		if _, err := tx.reply(250); err != nil && !isReply(err) {
			return
		}
	}
	if err := tx.command("RSET"); err != nil {
		return
	}
	if _, err := tx.reply(250); err != nil {
		tx.fail(err)
	}
}

// run sends env. Refused recipients are collected; the message goes ahead
// when at least one was accepted. The error is one Classify understands:
// its step and the server's reply.
func (tx *transaction) run(env *Envelope) (d Delivery, err error) {
	if strings.ContainsAny(env.From, "\r\n") || strings.ContainsAny(strings.Join(env.To, ""), "\r\n") {
		return d, withOp(OpBuild, errors.New("an envelope address contains CR or LF"))
	}
	mail := "MAIL FROM:<" + env.From + ">" + mailParams(tx.s, env)
	if err := tx.command(mail); err != nil {
		return d, withOp(OpMail, err)
	}
	if tx.chunked {
		return tx.runChunked(env)
	}
	if tx.pipelined {
		for _, rcpt := range env.To {
			tx.command("RCPT TO:<" + rcpt + ">")
		}
		if err := tx.command("DATA"); err != nil {
			return d, withOp(OpMail, err)
		}
	}

	_, mailErr := tx.reply(250)
	if mailErr != nil && !isReply(mailErr) {
		return d, withOp(OpMail, mailErr)
	}
	if mailErr != nil && !tx.pipelined {
		tx.reset(false)
		return d, withOp(OpMail, mailErr)
	}
	var fails []rcptFailure
	for _, rcpt := range env.To {
		if !tx.pipelined {
			if err := tx.command("RCPT TO:<" + rcpt + ">"); err != nil {
				return d, withOp(OpRcpt, err)
			}
		}
		if _, err := tx.reply(25); err != nil {
			if !isReply(err) {
				return d, withOp(OpRcpt, err)
			}
			fails = append(fails, rcptFailure{addr: rcpt, err: err})
		}
	}
	allRefused := len(fails) == len(env.To)
	if allRefused && !tx.pipelined {
		tx.reset(false)
		return d, classifyRecipients(fails)
	}
	if !tx.pipelined {
		if err := tx.command("DATA"); err != nil {
			return d, withOp(OpData, err)
		}
	}
	_, dataErr := tx.reply(354)
	if dataErr != nil && !isReply(dataErr) {
		return d, withOp(OpData, dataErr)
	}
	switch {
	case mailErr != nil:
		tx.reset(dataErr == nil)
		return d, withOp(OpMail, mailErr)
	case allRefused:
		tx.reset(dataErr == nil)
		return d, classifyRecipients(fails)
	case dataErr != nil:
		tx.reset(false)
		return d, withOp(OpData, dataErr)
	}
	for _, f := range fails {
		d.Rejected = append(d.Rejected, recipientResult(f.addr, Classify(withOp(OpRcpt, f.err))))
	}

	if err := writeData(tx.t.W, env.raw, tx.renew); err != nil {
		return d, withOp(OpWrite, tx.fail(err))
	}
	// The reply to the end of DATA gets a full Timeout of its own.
	msg, err := tx.reply(250)
	if err != nil {
		if isReply(err) {
			tx.reset(false)
		}
		return d, withOp(OpDataClose, err)
	}
	d.Reply = replyOf(&textproto.Error{Code: 250, Msg: msg})
	return d, nil
}

// runChunked is run with BDAT (RFC 3030) on a pipelining session: MAIL,
// each RCPT, "BDAT <size> LAST" and the whole message go out in one write,
// and the replies are read in order: the transaction costs one round trip.
// The message goes as it is rendered, with CRLF line ends and no
// dot-stuffing (BDAT counts bytes instead). A server that refused the
// sender or every recipient reads the chunk all the same and refuses it
// too; the outcome is decided from the replies exactly as with DATA. When
// the connection fails after the chunk was written, before the last reply,
// the failure is at OpDataClose: the server may have the message.
func (tx *transaction) runChunked(env *Envelope) (d Delivery, err error) {
	body := crlf(env.raw)
	for _, rcpt := range env.To {
		tx.command("RCPT TO:<" + rcpt + ">")
	}
	tx.command("BDAT " + strconv.Itoa(len(body)) + " LAST")
	if err := writeChunk(tx.t.W, body, tx.renew); err != nil {
		return d, withOp(OpWrite, tx.fail(err))
	}
	// Every reply comes after the whole message was written. A server
	// that closed the session before reading it (an idle pooled session)
	// fails at the first reply, and the pool dials again; one that stays
	// silent until the timeout may be working on the message, so that is
	// uncertain, and not tried again on another session.
	lost := func(op Op, err error) error {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return withOp(OpDataClose, err)
		}
		return withOp(op, err)
	}
	_, mailErr := tx.reply(250)
	if mailErr != nil && !isReply(mailErr) {
		return d, lost(OpMail, mailErr)
	}
	var fails []rcptFailure
	for _, rcpt := range env.To {
		if _, err := tx.reply(25); err != nil {
			if !isReply(err) {
				return d, lost(OpRcpt, err)
			}
			fails = append(fails, rcptFailure{addr: rcpt, err: err})
		}
	}
	msg, bdatErr := tx.reply(250)
	if bdatErr != nil && !isReply(bdatErr) {
		return d, withOp(OpDataClose, bdatErr)
	}
	switch {
	case mailErr != nil:
		tx.reset(false)
		return d, withOp(OpMail, mailErr)
	case len(fails) == len(env.To):
		tx.reset(false)
		return d, classifyRecipients(fails)
	case bdatErr != nil:
		tx.reset(false)
		return d, withOp(OpDataClose, bdatErr)
	}
	for _, f := range fails {
		d.Rejected = append(d.Rejected, recipientResult(f.addr, Classify(withOp(OpRcpt, f.err))))
	}
	d.Reply = replyOf(&textproto.Error{Code: 250, Msg: msg})
	return d, nil
}

// crlf returns msg with every line ended by CRLF (a bare LF becomes CRLF),
// msg itself when it has no bare LF, as rendered messages do not.
func crlf(msg []byte) []byte {
	bare := 0
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			bare++
		}
	}
	if bare == 0 {
		return msg
	}
	out := make([]byte, 0, len(msg)+bare)
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// writeChunk writes body after the queued commands and flushes, renewing
// the deadline before each buffer-full so that Timeout bounds a stall,
// not the size of a message.
func writeChunk(w *bufio.Writer, body []byte, renew func() error) error {
	for len(body) > 0 {
		if err := renew(); err != nil {
			return err
		}
		n := min(len(body), max(w.Available(), 4096))
		if _, err := w.Write(body[:n]); err != nil {
			return err
		}
		body = body[n:]
	}
	if err := renew(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("flush message: %w", err)
	}
	return nil
}

// mailParams are the MAIL FROM parameters of env on s: SMTPUTF8 when an
// address is not ASCII and the server offers it (RFC 6531), BODY=8BITMIME
// when the message has 8-bit bytes and the server offers it (RFC 6152).
func mailParams(s *session, env *Envelope) string {
	var p string
	if s.eightBit && !isASCII(env.raw) {
		p += " BODY=8BITMIME"
	}
	if s.smtputf8 && (!isASCII([]byte(env.From)) || !isASCII([]byte(strings.Join(env.To, "")))) {
		p += " SMTPUTF8"
	}
	return p
}

// writeData writes msg as the content of DATA: every line ended by CRLF
// (a bare LF becomes CRLF), a leading dot doubled (RFC 5321 §4.5.2), and the
// final "." line; then it flushes. It works line by line on the rendered
// message, not byte by byte as textproto's DotWriter does, and renews the
// deadline before each buffer-full so that Timeout bounds a stall, not the
// size of a message.
func writeData(w *bufio.Writer, msg []byte, renew func() error) error {
	if err := renew(); err != nil {
		return err
	}
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
	if err := renew(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("flush message: %w", err)
	}
	return nil
}

// isASCII reports whether b is plain 7-bit ASCII.
func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
