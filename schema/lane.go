package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Lane is one of the three queues a request travels in (contract §7):
// urgent before normal before bulk, without starving a waiting lower lane.
// Each lane has its own subjects (see Names.LaneSubjects) in the one request
// stream. The empty Lane is no lane chosen: in a request it means the lane
// of the subject the request is published on.
type Lane string

// The lanes of the contract.
const (
	// LaneUrgent is for one-time codes and password resets, on mail.urgent.
	LaneUrgent Lane = "urgent"
	// LaneNormal is for everything else, on mail.send (the v1 subjects).
	LaneNormal Lane = "normal"
	// LaneBulk is for batch jobs and newsletters, on mail.bulk.
	LaneBulk Lane = "bulk"
)

// lanes lists the lanes from the most to the least urgent.
var lanes = []Lane{LaneUrgent, LaneNormal, LaneBulk}

// ParseLane returns the lane named s in any case, normalised to lower case
// ("BULK" is LaneBulk). The empty string is the empty Lane. Any other
// string, one with surrounding spaces included, is an error.
func ParseLane(s string) (Lane, error) {
	if s == "" {
		return "", nil
	}
	for _, l := range lanes {
		if strings.EqualFold(s, string(l)) {
			return l, nil
		}
	}
	return "", fmt.Errorf("want urgent, normal or bulk, got %q", s)
}

// Valid reports whether l is one of the three lanes or empty.
func (l Lane) Valid() bool {
	switch l {
	case "", LaneUrgent, LaneNormal, LaneBulk:
		return true
	}
	return false
}

// UnmarshalJSON accepts the three lanes in any case (but without
// surrounding spaces) and normalises them to lower case, and null or "" for
// none; other strings are kept as they are so that Validate can report them
// with the field path.
func (l *Lane) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		*l = ""
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf(`want "urgent", "normal" or "bulk"`)
	}
	if p, err := ParseLane(s); err == nil {
		*l = p
		return nil
	}
	*l = Lane(s)
	return nil
}
