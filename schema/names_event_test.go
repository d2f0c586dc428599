package schema_test

import (
	"testing"

	"github.com/jetmail/jetmail/schema"
)

func TestEventSubjects(t *testing.T) {
	n := schema.DefaultNames()
	if got := n.EventSubject("unsubscribe", "Xk2U"); got != "mail.event.unsubscribe.Xk2U" {
		t.Errorf("EventSubject = %q", got)
	}
	if got := n.WithPrefix("acme").EventSubjects(); got != "acme.event.>" {
		t.Errorf("EventSubjects = %q", got)
	}
	if got := (schema.Names{}).WithDefaults().Suppressions; got != "JETMAIL_SUPPRESSIONS" {
		t.Errorf("default Suppressions = %q", got)
	}
}
