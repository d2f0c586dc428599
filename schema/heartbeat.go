package schema

import "time"

// HeartbeatSubject is the subject on which every worker publishes its
// Heartbeat every few seconds: "mail.worker.heartbeat". It is a core NATS
// subject that no stream stores: a heartbeat is only of use while it is
// fresh.
func (n Names) HeartbeatSubject() string { return n.Prefix + ".worker.heartbeat" }

// Heartbeat is what a worker says about itself on HeartbeatSubject, so
// that the web console can show which workers run and what they hold. A
// worker publishes one when it is ready, then one every Interval, and a
// last one with Stopping set when it stops. A worker that has not been
// heard from for a few intervals is gone (or cut off from NATS).
type Heartbeat struct {
	// Id is unique to one run of one worker process.
	Id string `json:"Id"`
	// Host is the worker's host name.
	Host string `json:"Host"`
	// Pid is the worker's process id.
	Pid int `json:"Pid"`
	// Started is when the worker's Run began.
	Started time.Time `json:"Started"`
	// Time is when the heartbeat was sent.
	Time time.Time `json:"Time"`
	// Interval is the time between heartbeats, in seconds.
	Interval float64 `json:"Interval"`
	// Concurrency is the most deliveries the worker has in flight at once.
	Concurrency int `json:"Concurrency"`
	// InFlight is the number of messages the worker holds now.
	InFlight int `json:"InFlight"`
	// Transport is "smtp", or "outbox" for a worker that writes .eml
	// files.
	Transport string `json:"Transport"`
	// SMTPConnections are the open SMTP connections, by connection name;
	// empty for the outbox.
	SMTPConnections map[string]int `json:"SMTPConnections,omitempty"`
	// Ready is what the worker's /readyz says: connected to NATS, with its
	// streams reachable.
	Ready bool `json:"Ready"`
	// Stopping is set on the last heartbeat of a worker that stops.
	Stopping bool `json:"Stopping,omitempty"`
}
