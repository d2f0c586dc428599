package smtpsink

import (
	"fmt"
	"net/smtp"
	"net/textproto"
	"strings"
	"testing"
)

func TestSinkCountsMessages(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("sink does not offer PIPELINING")
	}
	for i := range 3 {
		if err := c.Mail("a@example.com"); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("b@example.com"); err != nil {
			t.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		body := "Subject: x\r\n\r\n" + strings.Repeat(".dot-stuffed line\r\n", i+1)
		if _, err := w.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if s.Messages() != 3 || s.Connections() != 1 || s.Bytes() == 0 {
		t.Fatalf("messages %d, connections %d, bytes %d", s.Messages(), s.Connections(), s.Bytes())
	}
}

// TestSinkBDAT: a message in two chunks counts once, with its bytes, and
// the replies come in order after pipelined commands.
func TestSinkBDAT(t *testing.T) {
	t.Parallel()
	s, err := Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := textproto.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.ReadResponse(220); err != nil {
		t.Fatal(err)
	}
	if err := c.PrintfLine("EHLO x"); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadResponse(250); err != nil || !strings.Contains(msg, "CHUNKING") {
		t.Fatalf("EHLO: %q %v, want CHUNKING", msg, err)
	}
	part1, part2 := "Subject: x\r\n\r\n", "no dot-stuffing\r\n.\r\n"
	fmt.Fprintf(c.W, "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT %d\r\n%sBDAT %d LAST\r\n%s", len(part1), part1, len(part2), part2)
	if err := c.W.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"Ok", "Ok", "Ok", "Ok: queued"} {
		if _, msg, err := c.ReadResponse(250); err != nil || !strings.HasSuffix(msg, want) {
			t.Fatalf("reply %d: %q %v, want …%s", i, msg, err, want)
		}
	}
	if s.Messages() != 1 || s.Bytes() != int64(len(part1)+len(part2)) {
		t.Fatalf("messages %d, bytes %d", s.Messages(), s.Bytes())
	}
}
