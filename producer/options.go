package producer

import (
	"context"
	"fmt"
	"strings"

	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nuid"
)

// An Option configures a Producer in New. Options validate their argument
// and New returns their error, which wraps ErrInvalidOption.
type Option func(*options) error

// options are the settings of a Producer, fixed by New.
type options struct {
	prefix       string
	resultStream string
	deadStream   string
	idFunc       func() string
	limits       schema.Limits
}

func defaultOptions() options {
	n := schema.DefaultNames()
	return options{prefix: n.Prefix, resultStream: n.ResultStream, deadStream: n.DeadStream, idFunc: nuid.Next, limits: schema.DefaultLimits()}
}

// WithSubjectPrefix sets the first token of every subject the producer
// uses: requests go to <prefix>.send and results are read from
// <prefix>.result.<Id>. The default is "mail". It must match the workers'
// --subject-prefix, and be a single NATS token (no '.', '*', '>' or
// whitespace).
func WithSubjectPrefix(p string) Option {
	return func(o *options) error {
		if !schema.ValidToken(p) {
			return fmt.Errorf("%w: subject prefix %q is not a single NATS token", ErrInvalidOption, p)
		}
		o.prefix = p
		return nil
	}
}

// WithResultStream sets the name of the JetStream stream that holds the
// result events, read by Status, Wait and Results. The default is
// "JETMAIL_RESULTS". It must be a valid stream name (no '.', '*', '>',
// whitespace or path separators).
func WithResultStream(name string) Option {
	return func(o *options) error {
		if !validStreamName(name) {
			return fmt.Errorf("%w: result stream name %q is not a valid stream name", ErrInvalidOption, name)
		}
		o.resultStream = name
		return nil
	}
}

// WithDeadStream sets the name of the JetStream stream that holds the dead
// letters, read by DeadLetters and Replay. The default is "JETMAIL_DEAD".
// It must be a valid stream name.
func WithDeadStream(name string) Option {
	return func(o *options) error {
		if !validStreamName(name) {
			return fmt.Errorf("%w: dead-letter stream name %q is not a valid stream name", ErrInvalidOption, name)
		}
		o.deadStream = name
		return nil
	}
}

// validStreamName reports whether name can name a JetStream stream.
func validStreamName(name string) bool {
	return name != "" && !strings.ContainsAny(name, ".*> \t\r\n/\\")
}

// WithIDFunc sets the function that generates the Id of a request that has
// none. The default is nuid.Next, which is fast, safe for concurrent use and
// unique across processes. f is called from every goroutine that publishes,
// so it must be safe for concurrent use, and each Id it returns must match
// [A-Za-z0-9_-]{1,128}: New calls it once to check that, and a publish that
// gets an invalid Id from it fails with an error wrapping ErrInvalidOption.
func WithIDFunc(f func() string) Option {
	return func(o *options) error {
		if f == nil {
			return fmt.Errorf("%w: Id function is nil", ErrInvalidOption)
		}
		o.idFunc = f
		return nil
	}
}

// WithLimits sets the limits requests are validated against before they
// are published; zero fields take schema.DefaultLimits(). Use the workers'
// limits, so that what the producer lets through the workers accept.
func WithLimits(l schema.Limits) Option {
	return func(o *options) error {
		o.limits = l.WithDefaults()
		return nil
	}
}

// A PublishOption sets something for one publish call, such as extra
// subject tokens. Invalid settings are reported by the publish method, with
// an error wrapping ErrInvalidOption.
type PublishOption func(*publishOptions)

// publishOptions are the settings of one publish call.
type publishOptions struct {
	tokens      []string
	id          string
	lane        schema.Lane
	defaultLane schema.Lane
	batch       string
	ctx         context.Context
}

// WithTraceContext sets the W3C trace context of ctx's span on one request
// (traceparent and tracestate headers, contract §12), for the asynchronous
// publish methods, which take no context; Publish and PublishJSON use
// their own context's.
func WithTraceContext(ctx context.Context) PublishOption {
	return func(o *publishOptions) { o.ctx = ctx }
}

// WithDefaultPriority publishes one request on the subject of lane l when
// the request names no Priority of its own (WithPriority wins over both).
// `jetmail send --batch` uses it to publish batches on the bulk lane.
func WithDefaultPriority(l schema.Lane) PublishOption {
	return func(o *publishOptions) { o.defaultLane = l }
}

// WithBatch sets the BatchId of one request that has none, so that the
// messages of a batch job can be found and cancelled together. For
// PublishJSON the key is added to the payload, which is otherwise left as
// it is. It must match [A-Za-z0-9_-]{1,128}.
func WithBatch(batch string) PublishOption {
	return func(o *publishOptions) { o.batch = batch }
}

// WithPriority publishes one request on the subject of lane l (contract
// §7): schema.LaneUrgent for one-time codes and password resets,
// schema.LaneBulk for batch jobs and newsletters, schema.LaneNormal for the
// rest. It wins over the request's own Priority; without either, requests
// go to the normal lane (mail.send).
func WithPriority(l schema.Lane) PublishOption {
	return func(o *publishOptions) { o.lane = l }
}

// WithID sets the Id of one publish for a request or payload that has no
// Id of its own, instead of generating one. Batch jobs derive it from the
// request, so that re-running an interrupted batch publishes nothing twice.
// It must match [A-Za-z0-9_-]{1,128}.
func WithID(id string) PublishOption {
	return func(o *publishOptions) { o.id = id }
}

// WithSubjectTokens appends tokens to the lane subject of one publish, so
// that the request goes to mail.send.<token>... (for example a tenant:
// mail.send.acme). The request stream takes mail.send.> (and the other
// lanes' .>), so the tokens are for permissions and monitoring to select
// on; workers treat every such request of a lane alike. Each token must be a single NATS token;
// with no tokens the subject is mail.send.
func WithSubjectTokens(tokens ...string) PublishOption {
	return func(o *publishOptions) {
		o.tokens = append(o.tokens, tokens...)
	}
}
