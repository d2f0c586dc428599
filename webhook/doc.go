// Package webhook POSTs jetmail's result events to HTTP endpoints
// (CONTRACT §10), signed as Standard Webhooks
// (https://www.standardwebhooks.com).
//
// # How an event flows
//
// Every event on <prefix>.result.<Id> (and on <prefix>.event.>, for events
// that are not a message's state) is stored in the result stream,
// JETMAIL_RESULTS. A Dispatcher gives each configured webhook its own
// durable pull consumer on that stream, jetmail-webhook-NAME, and its own
// Options.Concurrency POST slots. For each event a slot:
//
//  1. acknowledges it without a POST when the webhook's Config.States do
//     not include its State;
//  2. drops it (Term, a log line, jetmail_webhook_deliveries_total with
//     outcome "dropped") when it was stored more than Options.MaxAge ago;
//  3. POSTs the event's bytes exactly as stored, with the headers
//     webhook-id, webhook-timestamp and webhook-signature (see Sign), and
//     waits up to Options.Timeout for the answer;
//  4. acknowledges it on any 2xx answer (outcome "ok"); otherwise asks
//     JetStream to hand it out again after a backoff (NakWithDelay,
//     outcome "retry"), or drops it when that retry would come after
//     MaxAge.
//
// # Guarantees
//
// Delivery is at least once. An event is acknowledged only after a 2xx
// answer, and until then it waits in JetStream, not in a goroutine: a
// worker that stops or dies, or a NATS server that restarts, loses no
// event, and a retry holds no POST slot. The webhook-id is the same on
// every POST of an event (and when a worker stored the event twice after a
// crash), so receivers deduplicate on it. Duplicates come from an answer
// that is lost or late (a POST the receiver took, but whose answer did not
// come within Timeout) and from an acknowledgement lost with a connection.
//
// Dispatchers in several workers share each webhook's consumer, so an
// event is POSTed once per webhook, not once per worker. Webhooks share
// nothing but the NATS connection: a slow or dead endpoint fills only its
// own POST slots and its own consumer's MaxAckPending, and delays neither
// another webhook nor the delivery of mail. While an endpoint is down, at
// most MaxAckPending of its events are taken from the stream and retried;
// the rest wait there untouched.
//
// A webhook seen for the first time gets the events stored from the
// moment its Dispatcher started, not the stream's history; a webhook
// whose consumer exists resumes where it stopped. Removing a webhook from
// the configuration leaves its consumer on the server, so adding it back
// resumes too, with events older than MaxAge dropped; delete the consumer
// (nats consumer rm JETMAIL_RESULTS jetmail-webhook-NAME) to forget it.
//
// # Receivers
//
// A receiver reads the body unchanged, checks it with Verify (or any
// Standard Webhooks library, with the "whsec_…" secret), answers 2xx
// quickly, and ignores a webhook-id it has already processed.
//
// Nothing in this package logs a secret or an event's body.
package webhook
