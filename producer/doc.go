// Package producer is the Go client of jetmail: services import it to send
// email through jetmail workers and to learn what became of it.
//
// A Producer publishes send requests (schema.Request) to the JetStream
// stream that workers consume, and reads the result events that workers
// publish for each request. It needs nothing but a JetStream context:
//
//	nc, err := nats.Connect(url)
//	...
//	js, err := jetstream.New(nc)
//	...
//	p, err := producer.New(js)
//	...
//	id, ack, err := p.Publish(ctx, &schema.Request{
//		To:      schema.AddressList{"jan@example.com"},
//		Subject: "Witaj!",
//		Body:    "Thanks for signing up.",
//	})
//	...
//	res, err := p.Wait(ctx, id) // sent or failed
//
// # Ids and duplicates
//
// Every request has an Id, its idempotency key. Publish uses the request's
// Id or generates one, and sends it both in the body and as the
// Nats-Msg-Id header, so JetStream drops a re-publish of the same Id within
// the request stream's duplicate window (1 hour by default) and the ack
// says so in PubAck.Duplicate. Retrying a publish that failed or timed out
// with the same Id is therefore safe. Give requests Ids derived from your own
// data ("order-42-confirmation") to make retries across process restarts
// safe too.
//
// # Publishing
//
// Publish and PublishJSON wait until JetStream has stored the request;
// PublishAsync and PublishJSONAsync do not, for batches. PublishJSON sends a
// payload written for the SMTP connector's Send Email action unchanged. All
// of them validate the request first and return a *schema.ValidationError,
// without publishing, for one that workers would reject. WithSubjectTokens
// publishes on mail.send.<tokens>, for tenants or priorities.
//
// # Results
//
// Workers publish one result event per state change of a message on
// mail.result.<Id>: accepted, deferred (to be retried), then sent or failed,
// with an HTTP-style Status. Status returns the latest event of an Id,
// Wait blocks until the final one, and Results lists or follows the events
// of all Ids.
//
// # Errors
//
// Errors wrap sentinels to test with errors.Is: ErrNoStream when the
// streams that workers create are missing, ErrNotFound when an Id has no
// result, ErrInvalidID and ErrInvalidOption for bad arguments. Errors from
// NATS stay reachable too, such as nats.ErrMaxPayload for a request over
// the server's max_payload: 1 MiB by default, less than the attachments that
// schema.DefaultLimits() allow, so raise max_payload on servers that carry
// large attachments.
//
// The subjects, stream names and formats are those of jetmail's wire
// contract; the Options change the subject prefix and the result stream for
// deployments that changed them on the workers too.
package producer
