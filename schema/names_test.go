package schema_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

func TestLaneSubjects(t *testing.T) {
	n := schema.DefaultNames()
	if got := n.SendSubject(); got != "mail.send" {
		t.Errorf("SendSubject() = %q", got)
	}
	if got := n.UrgentSubject(); got != "mail.urgent" {
		t.Errorf("UrgentSubject() = %q", got)
	}
	if got := n.BulkSubject(); got != "mail.bulk" {
		t.Errorf("BulkSubject() = %q", got)
	}
	if diff := cmp.Diff([]string{"mail.send", "mail.send.>"}, n.SendSubjects()); diff != "" {
		t.Errorf("SendSubjects() (-want +got):\n%s", diff)
	}
	for lane, want := range map[schema.Lane]string{
		schema.LaneUrgent: "mail.urgent", schema.LaneNormal: "mail.send", schema.LaneBulk: "mail.bulk",
		"": "mail.send", "BULK": "mail.send",
	} {
		if got := n.LaneSubject(lane); got != want {
			t.Errorf("LaneSubject(%q) = %q, want %q", lane, got, want)
		}
		if diff := cmp.Diff([]string{want, want + ".>"}, n.LaneSubjects(lane)); diff != "" {
			t.Errorf("LaneSubjects(%q) (-want +got):\n%s", lane, diff)
		}
	}
	want := []string{"mail.send", "mail.send.>", "mail.urgent", "mail.urgent.>", "mail.bulk", "mail.bulk.>"}
	if diff := cmp.Diff(want, n.RequestSubjects()); diff != "" {
		t.Errorf("RequestSubjects() (-want +got):\n%s", diff)
	}
	// Every request subject's lane is the lane whose subjects it is one of.
	for _, lane := range []schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk} {
		for _, s := range n.LaneSubjects(lane) {
			if got := n.LaneOf(s); got != lane {
				t.Errorf("LaneOf(%q) = %q, want %q", s, got, lane)
			}
		}
	}
	p := n.WithPrefix("acme")
	want = []string{"acme.send", "acme.send.>", "acme.urgent", "acme.urgent.>", "acme.bulk", "acme.bulk.>"}
	if diff := cmp.Diff(want, p.RequestSubjects()); diff != "" {
		t.Errorf("RequestSubjects() with prefix acme (-want +got):\n%s", diff)
	}
}

func TestLaneOf(t *testing.T) {
	n := schema.DefaultNames()
	for subject, want := range map[string]schema.Lane{
		"mail.urgent":            schema.LaneUrgent,
		"mail.urgent.tenant-1":   schema.LaneUrgent,
		"mail.urgent.a.b":        schema.LaneUrgent,
		"mail.bulk":              schema.LaneBulk,
		"mail.bulk.newsletter":   schema.LaneBulk,
		"mail.send":              schema.LaneNormal,
		"mail.send.urgent":       schema.LaneNormal, // the token after the prefix decides
		"mail.send.bulk.x":       schema.LaneNormal,
		"mail.urgently":          schema.LaneNormal,
		"mail.bulky.x":           schema.LaneNormal,
		"mail.URGENT":            schema.LaneNormal, // subjects are case-sensitive
		"other.urgent":           schema.LaneNormal,
		"mailurgent":             schema.LaneNormal,
		"mail":                   schema.LaneNormal,
		"":                       schema.LaneNormal,
		"acme.bulk":              schema.LaneNormal,
		"mail.result.urgent":     schema.LaneNormal,
		"mail.bulk.>":            schema.LaneBulk,
		"mail.urgent.with.dots.": schema.LaneUrgent,
	} {
		if got := n.LaneOf(subject); got != want {
			t.Errorf("LaneOf(%q) = %q, want %q", subject, got, want)
		}
	}
	acme := n.WithPrefix("acme")
	if got := acme.LaneOf("acme.bulk.x"); got != schema.LaneBulk {
		t.Errorf("LaneOf(acme.bulk.x) with prefix acme = %q", got)
	}
	if got := acme.LaneOf("mail.bulk"); got != schema.LaneNormal {
		t.Errorf("LaneOf(mail.bulk) with prefix acme = %q", got)
	}
}

func TestIsRequestSubject(t *testing.T) {
	n := schema.DefaultNames()
	for subject, want := range map[string]bool{
		"mail.send": true, "mail.send.tenant": true, "mail.urgent": true, "mail.urgent.a.b": true,
		"mail.bulk": true, "mail.bulk.news": true,
		"mail.sender": false, "mail.urgently": false, "mail.result.x": false, "mail.schedule.x": false,
		"mail.dead.x": false, "other.send": false, "": false,
	} {
		if got := n.IsRequestSubject(subject); got != want {
			t.Errorf("IsRequestSubject(%q) = %v, want %v", subject, got, want)
		}
	}
}
