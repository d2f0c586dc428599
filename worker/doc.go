// Package worker is the jetmail service: it consumes email-send requests
// from a JetStream work-queue stream and delivers them over SMTP, publishing
// a result event for every state change.
//
// # How a message flows, file by file
//
//   - worker.go: Config (DefaultConfig holds the defaults), New and Run.
//     Run creates the streams and the durable consumer (config.Streams),
//     serves /metrics, /healthz, /readyz and Config.API, and owns every
//     goroutine it starts.
//   - consume.go: the pull loop feeds Config.Concurrency handler
//     goroutines; progress acks keep a slow delivery from being redelivered.
//   - handle.go: one delivery. It gathers the facts: the request admitted
//     by config.Admission (decoded, validated, template rendered, sender
//     allowed), the Id, the latest stored event of the Id (dedupe), the
//     built message (build.go, with go-mail). Then decide says what to do,
//     and settle does it.
//   - decide.go: THE decision table. Every outcome of a delivery is one row
//     of the pure function decide: invalid, sender not allowed, already
//     sent, already final, over max attempts, send (202 accepted on the
//     first attempt), sent, deferred, exhausted, permanent, shutdown. Its
//     table test names every row.
//   - transport.go, smtppool.go, smtptx.go: the transports. The .eml outbox
//     (FileTransport), or a pool of SMTP sessions per named connection
//     (SMTPTransport) running one transaction engine, with or without
//     PIPELINING.
//   - classify.go: THE classifier. Classify turns any failure into a
//     DeliveryError: transient or permanent, and the final status (401,
//     403, 404, 500).
//   - retry.go: when a transient failure is tried again (backoff/v4), and
//     when it is given up.
//   - events.go: result events and dead letters, stored and acknowledged
//     by JetStream before the request is settled.
//   - metrics.go, embedded.go: the Prometheus collectors, and the embedded
//     JetStream server of `jetmail worker` without --nats-url.
//   - heartbeat.go: the worker's heartbeat on mail.worker.heartbeat (core
//     NATS), which the web console lists the workers by.
//
// # Acknowledgement
//
// Effects are made durable first: the dead letter and the result event are
// stored, and JetStream's acknowledgement received, before the request is
// acknowledged. A crash before that makes JetStream redeliver the request
// after Config.AckWait; progress acks keep a slow delivery from being
// redelivered meanwhile. So nothing accepted is lost, and the only
// duplicates are a message sent just before a crash whose sent result was
// not yet stored, an SMTP timeout after the final dot, and a consumer
// leader change in a cluster (README, "Reliability").
//
// # Shutdown
//
// When Run's context ends the worker stops pulling, returns buffered
// messages to the stream, lets in-flight deliveries finish within
// Config.GracePeriod, then cancels the rest (they are returned with Nak),
// closes the SMTP sessions and returns nil.
package worker
