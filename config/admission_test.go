package config

import "testing"

func TestSenderAllows(t *testing.T) {
	t.Parallel()
	p := Sender{Allowed: []string{"@example.com", "boss@other.org"}}
	for addr, want := range map[string]bool{
		"a@example.com": true, "A@EXAMPLE.COM": true, "boss@other.org": true,
		"x@other.org": false, "a@evil-example.com": false, "a@example.com.evil": false,
	} {
		if got := p.Allows(addr); got != want {
			t.Errorf("allows(%q) = %v, want %v", addr, got, want)
		}
	}
	if !(Sender{}).Allows("anyone@anywhere") {
		t.Error("an empty list must allow every sender")
	}
}
