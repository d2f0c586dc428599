// Package worker is the jetmail service: it consumes email-send requests
// from a JetStream work-queue stream and delivers them over SMTP, publishing
// a result event for every state change.
//
// # How a message flows
//
// Worker.Run creates (or updates) the request, result and dead-letter
// streams and the durable pull consumer shared by all workers, then feeds
// Config.Concurrency handler goroutines from the consumer. For each message
// a handler:
//
//  1. decodes and validates the request (schema.Decode, Validate; a
//     Template is rendered and the result validated again); an invalid
//     request gets one failed/400 result and is terminated;
//  2. looks up the latest result of the request's Id and, if it is already
//     sent, acknowledges without sending again;
//  3. publishes 202 accepted on the first delivery;
//  4. builds the MIME message with go-mail (Build) and sends it through
//     the Transport: an SMTP session pool per named connection
//     (SMTPTransport) or the .eml outbox (FileTransport);
//  5. classifies any failure in one place (Classify) and decides what
//     follows (decide): sent → 200 and Ack; transient with attempts and age
//     left → 202 deferred and NakWithDelay, so the wait happens in
//     JetStream; otherwise → failed, a dead letter, and Term.
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
//
// The worker serves Prometheus metrics (Metrics), /healthz, /readyz and the
// HTTP API (API) from Handler. Every goroutine it starts is owned by Run.
package worker
