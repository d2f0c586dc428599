// Package config is what an operator configures about sending, and the one
// place that applies it to a request before anything is published or sent.
//
//   - SMTP is one named SMTP connection: its URL, TLS policy, pool size,
//     rate limit, default and allowed senders (smtp.go); LoadConnections
//     reads the connections file of `jetmail worker --connections`
//     (connections.go).
//   - Templates are the message templates a request can name
//     (templates.go).
//   - Admission decides whether a request payload is admitted: decoding,
//     validation against the limits, templates and the sender policy of its
//     connection (admission.go). The worker and the HTTP API both use it, so
//     that they refuse the same requests for the same reasons.
//   - Streams are the JetStream streams and the consumer of a deployment
//     (streams.go): the worker creates them, and tests create the very same
//     ones.
//
// Nothing here dials a server: a configuration is checked when it is built,
// and the worker opens connections later.
package config
