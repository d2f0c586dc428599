package smtptest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// A Fault tells the server to misbehave when it receives a command. Add
// faults with [Server.AddFault].
//
// When a fault fires, the server first stalls for Delay, if any. Then, if
// Drop is set, it closes the connection without replying; otherwise, if
// Code is set, it answers the command with Code, Enhanced and Message
// instead of processing it. A fault with neither Drop nor Code only
// delays the command, which is then processed normally.
type Fault struct {
	// Cmd is the command the fault applies to:
	//
	//   - "CONNECT": the greeting. A reply fault sends its reply instead of
	//     the 220 greeting and closes the connection.
	//   - "EHLO": EHLO and HELO.
	//   - "AUTH", "MAIL", "RCPT", "RSET", "NOOP", "QUIT", "STARTTLS" and
	//     any other command verb: that command.
	//   - "DATA-START": the DATA command itself, whose normal reply is 354.
	//   - "DATA": the reply after the message body, whose normal reply is
	//     250. A Drop fault closes the connection after reading part of
	//     the body. It also applies to messages sent with BDAT.
	//
	// Cmd is not case sensitive.
	Cmd string

	// Match, if not empty, restricts the fault to some commands; it is
	// compared with an address without regard to case. For MAIL it is
	// compared with the sender, for RCPT with the recipient, and for DATA
	// and DATA-START with the sender and every accepted recipient, any of
	// which may match. For EHLO it is compared with the client's host
	// name and for AUTH with the mechanism name. A fault on another
	// command with a non-empty Match never fires.
	Match string

	// Times is how many times the fault fires; 0 means every time.
	Times int

	// Code is the reply code to answer with, such as 451 or 550.
	Code int

	// Enhanced is the enhanced status code to answer with, such as
	// "4.3.0" or "5.1.1". If it is empty, the reply carries the code's
	// class followed by ".0.0", as go-smtp does.
	Enhanced string

	// Message is the text of the reply. Lines are separated by "\n".
	Message string

	// Drop makes the server close the connection instead of replying.
	Drop bool

	// Delay is how long the server stalls before replying or dropping.
	// Closing the server interrupts the stall. Delays longer than the
	// server's 30 s read timeout make the connection time out.
	Delay time.Duration

	// Probability, if not zero, is the chance, from 0 to 1, that the fault
	// fires each time it matches a command, for random faults in soak
	// tests. A fault that does not fire is passed over as if it did not
	// match: the next fault may fire instead, and Times is not used up.
	// Zero means always, like 1.
	Probability float64
}

type faultState struct {
	Fault
	cmd   string // normalised Cmd
	left  int    // remaining firings, when Times > 0
	smtp  *smtp.SMTPError
	reply []byte // the whole reply, CRLF terminated
}

func newFaultState(f Fault) (*faultState, error) {
	cmd := strings.ToUpper(strings.TrimSpace(f.Cmd))
	switch {
	case cmd == "":
		return nil, errors.New("fault has no Cmd")
	case cmd == "HELO":
		cmd = "EHLO"
	case strings.ContainsAny(cmd, " \t\r\n"):
		return nil, fmt.Errorf("fault Cmd %q is not a command", f.Cmd)
	}
	if !(f.Probability >= 0 && f.Probability <= 1) { // also rejects NaN
		return nil, fmt.Errorf("fault on %s has Probability %g outside [0, 1]", cmd, f.Probability)
	}
	if f.Times < 0 {
		return nil, fmt.Errorf("fault on %s has negative Times %d", cmd, f.Times)
	}
	if f.Code != 0 && (f.Code < 200 || f.Code > 599) {
		return nil, fmt.Errorf("fault on %s has invalid Code %d", cmd, f.Code)
	}
	enh := smtp.EnhancedCodeNotSet
	if f.Enhanced != "" {
		parts := strings.Split(f.Enhanced, ".")
		if len(parts) != 3 {
			return nil, fmt.Errorf("fault on %s has invalid Enhanced %q", cmd, f.Enhanced)
		}
		for i, p := range parts {
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n > 999 {
				return nil, fmt.Errorf("fault on %s has invalid Enhanced %q", cmd, f.Enhanced)
			}
			enh[i] = n
		}
	}
	msg := f.Message
	if msg == "" {
		msg = "Fault injected by smtptest"
	}
	msg = strings.ReplaceAll(msg, "\r", "")
	fs := &faultState{
		Fault: f,
		cmd:   cmd,
		left:  f.Times,
		smtp:  &smtp.SMTPError{Code: f.Code, EnhancedCode: enh, Message: msg},
	}
	if f.Code != 0 {
		fs.reply = formatReply(f.Code, enh, msg)
	}
	return fs, nil
}

// formatReply formats a reply the way go-smtp does.
func formatReply(code int, enh smtp.EnhancedCode, msg string) []byte {
	if enh == smtp.EnhancedCodeNotSet {
		enh = smtp.EnhancedCode{code / 100, 0, 0}
	}
	lines := strings.Split(msg, "\n")
	var b strings.Builder
	for _, l := range lines[:len(lines)-1] {
		fmt.Fprintf(&b, "%d-%s\r\n", code, l)
	}
	fmt.Fprintf(&b, "%d %d.%d.%d %s\r\n", code, enh[0], enh[1], enh[2], lines[len(lines)-1])
	return []byte(b.String())
}

// fire finds the first fault on cmd that matches and has firings left,
// counts the firing and returns the fault. match reports whether a
// fault's non-empty Match matches; a nil match matches nothing.
func (s *Server) fire(cmd string, match func(string) bool) (*faultState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.faults {
		if f.cmd != cmd || (f.Times > 0 && f.left == 0) {
			continue
		}
		if f.Match != "" && (match == nil || !match(f.Match)) {
			continue
		}
		if f.Probability > 0 && rand.Float64() >= f.Probability {
			continue
		}
		if f.Times > 0 {
			f.left--
		}
		s.faultHits++
		s.cond.Broadcast()
		return f, true
	}
	return nil, false
}

// matchAny returns a matcher that matches any of addrs.
func matchAny(addrs ...string) func(string) bool {
	return func(m string) bool {
		for _, a := range addrs {
			if strings.EqualFold(a, m) {
				return true
			}
		}
		return false
	}
}

// pathArg extracts the address from the argument of MAIL or RCPT, such as
// "FROM:<a@example.com> SIZE=10". It is lenient: it only has to find what
// go-smtp will find in well-formed commands.
func pathArg(arg, prefix string) (string, bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", false
	}
	p := strings.TrimSpace(arg[len(prefix):])
	if rest, ok := strings.CutPrefix(p, "<"); ok {
		addr, _, ok := strings.Cut(rest, ">")
		if !ok {
			return "", false
		}
		// Drop an obsolete source route, "@a,@b:user@c".
		if strings.HasPrefix(addr, "@") {
			if _, after, ok := strings.Cut(addr, ":"); ok {
				addr = after
			}
		}
		return addr, true
	}
	addr, _, _ := strings.Cut(p, " ")
	return addr, true
}
