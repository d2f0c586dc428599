// Package suppress is jetmail's suppression list (contract §9): the
// addresses, and @domain entries, that mail is no longer sent to, kept in
// a JetStream KV bucket (JETMAIL_SUPPRESSIONS by default, defined by
// config.Streams.SuppressionBucket), and the one-click unsubscribe tokens
// (RFC 8058) that feed it.
//
// # Entries
//
// An Entry names an address (jan@example.com) or a whole domain
// (@example.com), with its Reason (bounce, unsubscribe or manual), the Time
// it was added, the Id of the message that caused it (if any) and, for
// bounces, when it Expires. Addresses are case-insensitive: an entry holds
// the address lower-cased (Canonical). A domain entry matches the domain
// and every subdomain of it: @example.com matches jan@example.com and
// jan@mail.example.com, not jan@example.community.
//
// # Which entry wins
//
// There is one entry per address or domain. When Store.Add meets an
// existing one, the stronger reason stays: manual beats unsubscribe beats
// bounce. A bounce over a bounce renews it (a new Time, Id and expiry); a
// manual entry over a bounce replaces it and so removes its expiry; an
// unsubscribe or manual entry over one of the same reason changes nothing.
// To weaken an entry, remove it and add it again.
//
// # Where an entry applies
//
// bounce and manual entries apply to every message; unsubscribe entries to
// messages in the bulk lane and to messages that carry Unsubscribe (a
// List-Unsubscribe header). A request with IgnoreSuppression is sent to
// every recipient. Checker applies these rules from an in-memory copy of
// the bucket that a KV watch keeps current, so that a worker's check before
// each attempt costs map look-ups, not NATS round trips.
//
// # Expiry
//
// A bounce entry is written with a per-key TTL (the bucket's LimitMarkerTTL
// makes the server delete it and tell the watchers), and carries Expires
// itself, so that Get, List, Match and the Checker ignore it from then on
// even when the server's deletion comes late.
//
// # Keys
//
// EncodeKey and DecodeKey map addresses to KV keys, which allow only
// [-/_=.a-zA-Z0-9]:
//
//	jan.kowalski+news@Example.COM  →  addr.jan=2Ekowalski=2Bnews.example.com
//	@Example.COM                   →  domain.example.com
//
// An address key is "addr.", the escaped local part (one token), ".", the
// escaped domain; a domain key is "domain." and the escaped domain. Escaping
// keeps a-z, 0-9, '-' and '_' and writes every other byte as '=' and two
// upper-case hex digits; a domain keeps the dots between its labels
// ([192.0.2.1] is =5B192.0.2.1=5D), unless one of them is empty (only a
// domain literal can have that), then its dots are escaped too. Keys read
// well in `nats kv ls`, and every key decodes to exactly one address and
// back.
package suppress
