package smtpsink

import (
	"net/smtp"
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
