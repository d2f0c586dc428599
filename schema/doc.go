// Package schema is jetmail's wire contract: the send request that producers
// publish on mail.send (Request) and the result events that workers publish on
// mail.result.<Id> (Result). Requests travel in one of three lanes (Lane),
// each with its own subjects (Names.LaneSubjects): mail.urgent, mail.send
// and mail.bulk.
//
// The request format is that of a well-known workflow platform's SMTP
// "Send Email" action, so payloads written for it decode unchanged: keys are
// matched case-insensitively, To/CC/Bcc may be a "a@x;b@y" string or an array,
// and IsHtml may be a bool or the string "true"/"false". Decode parses a
// payload; Request.Validate checks every rule of the contract at once and
// reports each broken rule with its field path.
//
// The JSON Schema (draft 2020-12) documents request.schema.json and
// result.schema.json in this folder describe the same formats for other
// languages, keys in any case included. Tests keep them and the Go code in
// agreement: on the payloads under examples/ (valid ones pass both, those
// under examples/invalid/ fail both), and on generated and fuzzed payloads,
// where the schema accepts whatever Go accepts and rejects the rest but for
// the rules it leaves to Go: the full syntax of addresses, of media type
// parameters and of the Unsubscribe URL (as net/url parses it), the size
// limits of Limits, and the schedule limit of SendAt, which counts from the
// time of validation.
//
// The package imports nothing but the standard library, so producers in Go can
// use it without pulling in NATS or SMTP code.
package schema
