package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/schema"
)

// Defaults of Options.
const (
	DefaultTimeout         = 10 * time.Second
	DefaultMaxAge          = 24 * time.Hour
	DefaultConcurrency     = 4
	DefaultPendingInterval = 5 * time.Second
)

// ConsumerPrefix starts the name of every webhook's durable consumer on
// the result stream: jetmail-webhook-NAME.
const ConsumerPrefix = "jetmail-webhook-"

// Options tune a Dispatcher. The zero value of each field means its
// default, so Options{} gives the contract's behaviour (CONTRACT §10).
type Options struct {
	// Timeout bounds one POST, from dialing until the answer's status
	// line and headers (and at most 64 KiB of its body, read to reuse
	// the connection). No answer within it counts as a failure. Default
	// 10s.
	Timeout time.Duration
	// MaxAge is how long an event is retried, measured from when it was
	// stored in the result stream. An event that is older than MaxAge when
	// its turn comes, or whose next retry would come after it, is dropped
	// (terminated, logged and counted). Default 24h.
	MaxAge time.Duration
	// Concurrency is the number of POSTs in flight per webhook in this
	// process. Default 4.
	Concurrency int
	// MaxAckPending bounds the events a webhook's consumer hands out and
	// that are not yet settled, across all processes: those being POSTed
	// and those waiting for a retry. When an endpoint is down this is all
	// that is taken from the stream and retried; the rest waits in
	// JetStream, untouched, until one of them gets through. Raise it when
	// many workers share a webhook: each holds up to 2×Concurrency.
	// Default 16×Concurrency.
	MaxAckPending int
	// Retry is the delay between POSTs of a failing event. The zero value
	// means DefaultRetry; any other value is used as given.
	Retry RetryPolicy
	// Subjects are the subjects of the result stream that are POSTed.
	// Default "<prefix>.result.>" and "<prefix>.event.>" (the latter for
	// events that are not a message's state, such as an unsubscribe; it
	// need not be a subject of the stream yet).
	Subjects []string
	// PendingInterval is how often jetmail_webhook_pending is refreshed
	// from the consumers. Default 5s.
	PendingInterval time.Duration
	// HTTPClient sends the POSTs and is used as given. Default: a client
	// with the proxy settings of the environment (HTTPS_PROXY, …) that
	// does not follow redirects: a redirected POST would either arrive as
	// a GET without the body or carry the signed event to a URL nobody
	// configured, so a 3xx answer counts as a failure.
	HTTPClient *http.Client
	// Now is the clock of the signatures' timestamps and of the events'
	// age. Default time.Now; tests replace it.
	Now func() time.Time
}

func (o Options) withDefaults(names schema.Names) Options {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MaxAckPending == 0 {
		o.MaxAckPending = 16 * o.Concurrency
	}
	if o.Retry == (RetryPolicy{}) {
		o.Retry = DefaultRetry
	}
	if len(o.Subjects) == 0 {
		o.Subjects = []string{names.ResultSubjects(), names.Prefix + ".event.>"}
	}
	if o.PendingInterval == 0 {
		o.PendingInterval = DefaultPendingInterval
	}
	if o.HTTPClient == nil {
		o.HTTPClient = newClient(o.Concurrency)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Timeout < 0:
		return fmt.Errorf("Timeout must not be negative, got %s", o.Timeout)
	case o.MaxAge < 0:
		return fmt.Errorf("MaxAge must not be negative, got %s", o.MaxAge)
	case o.Concurrency < 0:
		return fmt.Errorf("Concurrency must not be negative, got %d", o.Concurrency)
	case o.MaxAckPending < o.Concurrency:
		return fmt.Errorf("MaxAckPending %d is below Concurrency %d: POST slots would stay idle", o.MaxAckPending, o.Concurrency)
	case o.PendingInterval < 0:
		return fmt.Errorf("PendingInterval must not be negative, got %s", o.PendingInterval)
	}
	for _, s := range o.Subjects {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return fmt.Errorf("Subjects: %q is not a subject", s)
		}
	}
	return o.Retry.validate()
}

// newClient is the default HTTP client: the environment's proxy settings,
// conns idle connections per host, and no redirects.
func newClient(conns int) *http.Client {
	var tr *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		tr = dt.Clone()
	} else {
		tr = &http.Transport{Proxy: http.ProxyFromEnvironment}
	}
	tr.MaxIdleConnsPerHost = conns
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Dispatcher POSTs the events of the result stream to webhooks, each
// webhook through its own durable consumer and its own POST slots, so that
// one slow or dead endpoint delays no other. Any number of Dispatchers
// (one per worker) may run for the same webhooks: they share the
// consumers, so each event is POSTed once per webhook, not once per
// Dispatcher.
//
// A Dispatcher is safe for concurrent use; Run may be called again after it
// has returned.
type Dispatcher struct {
	js      jetstream.JetStream
	names   schema.Names
	opts    Options
	hooks   []*hook
	log     *slog.Logger
	ackWait time.Duration
	running atomic.Bool
	// ownClient is set when opts.HTTPClient is the default one, which Run
	// cleans up after itself.
	ownClient bool
}

// hook is one webhook and what the Dispatcher keeps for it.
type hook struct {
	cfg      Config
	consumer string
	log      *slog.Logger
	ok       prometheus.Counter
	retry    prometheus.Counter
	dropped  prometheus.Counter
	pending  prometheus.Gauge
}

// New checks its arguments and returns a Dispatcher for hooks that reads
// the result stream of names through js. Metrics are registered on reg
// (nil: not registered); a nil logger discards logs. New does no I/O; Run
// creates the consumers.
func New(js jetstream.JetStream, names schema.Names, hooks []Config, reg prometheus.Registerer, logger *slog.Logger, opts Options) (*Dispatcher, error) {
	if js == nil {
		return nil, errors.New("webhook: no JetStream")
	}
	if !schema.ValidToken(names.Prefix) || names.ResultStream == "" {
		return nil, fmt.Errorf("webhook: names need a subject prefix and a result stream, got %q and %q", names.Prefix, names.ResultStream)
	}
	if len(hooks) == 0 {
		return nil, errors.New("webhook: no webhooks")
	}
	var seen []string
	for _, h := range hooks {
		if err := h.validate(); err != nil {
			return nil, fmt.Errorf("webhook: %w", err)
		}
		if slices.Contains(seen, h.Name) {
			return nil, fmt.Errorf("webhook: two webhooks named %s", h.Name)
		}
		seen = append(seen, h.Name)
	}
	ownClient := opts.HTTPClient == nil
	opts = opts.withDefaults(names)
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("webhook options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg, hooks)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{
		js: js, names: names, opts: opts, log: logger, ownClient: ownClient,
		// A message may wait in the pull buffer behind up to two rounds of
		// POSTs before its own: AckWait must outlast all three, or
		// JetStream hands it to another worker and it is POSTed twice.
		// It is also how long a NATS server that restarted takes to hand
		// out again the events that were waiting for a retry.
		ackWait: 3*opts.Timeout + 2*time.Second,
	}
	for _, c := range hooks {
		c.Secret = bytes.Clone(c.Secret)
		c.States = slices.Clone(c.States)
		d.hooks = append(d.hooks, &hook{
			cfg:      c,
			consumer: ConsumerPrefix + c.Name,
			log:      logger.With("webhook", c.Name),
			ok:       m.deliveries.WithLabelValues(c.Name, outcomeOK),
			retry:    m.deliveries.WithLabelValues(c.Name, outcomeRetry),
			dropped:  m.deliveries.WithLabelValues(c.Name, outcomeDropped),
			pending:  m.pending.WithLabelValues(c.Name),
		})
	}
	return d, nil
}

// Run creates or updates each webhook's consumer, then POSTs events until
// ctx ends. A consumer that cannot be created (NATS unreachable, the result
// stream not there yet) is tried again with a backoff of up to 30s, and
// the other webhooks go on meanwhile.
//
// A webhook's consumer that did not exist starts at the time Run was
// called, so adding a webhook does not send it the stream's history; one
// that exists resumes where it stopped, so events stored while no
// Dispatcher ran are delivered.
//
// When ctx ends, Run stops taking events, returns those not yet begun to
// the stream, lets the POSTs in flight finish (each is bounded by
// Options.Timeout) and settles them, and returns nil once every goroutine
// it started has stopped. It returns an error only when it is already
// running.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("webhook: Run is already running")
	}
	defer d.running.Store(false)
	start := time.Now() // wall clock: compared with the server's timestamps
	var wg sync.WaitGroup
	for _, h := range d.hooks {
		wg.Go(func() { d.runHook(ctx, h, start) })
		wg.Go(func() { d.watchPending(ctx, h) })
	}
	hooks := make([]Config, len(d.hooks))
	for i, h := range d.hooks {
		hooks[i] = h.cfg
	}
	d.log.InfoContext(ctx, "webhooks started", "webhooks", hooks, "timeout", d.opts.Timeout,
		"max_age", d.opts.MaxAge, "concurrency", d.opts.Concurrency)
	wg.Wait()
	if d.ownClient {
		d.opts.HTTPClient.CloseIdleConnections() // and their goroutines
	}
	d.log.Info("webhooks stopped")
	return nil
}

// runHook keeps one webhook's consumer and its pull loop going until ctx
// ends.
func (d *Dispatcher) runHook(ctx context.Context, h *hook, start time.Time) {
	wait := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(500*time.Millisecond),
		backoff.WithMaxInterval(30*time.Second),
		backoff.WithMaxElapsedTime(0),
	)
	for ctx.Err() == nil {
		began := time.Now()
		cons, err := d.ensureConsumer(ctx, h, start)
		if err == nil {
			d.consume(ctx, h, cons)
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(began) > time.Minute {
			wait.Reset()
		}
		delay := wait.NextBackOff()
		if err != nil {
			h.log.WarnContext(ctx, "cannot set up the webhook's consumer; retrying", "consumer", h.consumer,
				"error", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

// ensureConsumer creates the webhook's durable consumer, or updates the
// settings this package manages on the one that exists, leaving its
// position alone. Two Dispatchers may do this at once.
func (d *Dispatcher) ensureConsumer(ctx context.Context, h *hook, start time.Time) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	stream := d.names.ResultStream
	for {
		c, err := d.js.Consumer(ctx, stream, h.consumer)
		switch {
		case err == nil:
			cfg := c.CachedInfo().Config
			if d.managed(h, &cfg) {
				return c, nil
			}
			if c, err = d.js.UpdateConsumer(ctx, stream, cfg); err != nil {
				return nil, fmt.Errorf("update consumer %s on %s: %w", h.consumer, stream, err)
			}
			h.log.InfoContext(ctx, "webhook consumer updated", "consumer", h.consumer)
			return c, nil
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			cfg := jetstream.ConsumerConfig{
				Durable:       h.consumer,
				DeliverPolicy: jetstream.DeliverByStartTimePolicy,
				OptStartTime:  &start,
			}
			d.managed(h, &cfg)
			c, err = d.js.CreateConsumer(ctx, stream, cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue // another Dispatcher created it a moment ago
			}
			if err != nil {
				return nil, fmt.Errorf("create consumer %s on %s: %w", h.consumer, stream, err)
			}
			h.log.InfoContext(ctx, "webhook consumer created", "consumer", h.consumer, "start", start)
			return c, nil
		default:
			return nil, fmt.Errorf("consumer %s on %s: %w", h.consumer, stream, err)
		}
	}
}

// managed sets the consumer settings this package decides on cfg and
// reports whether they were already so.
func (d *Dispatcher) managed(h *hook, cfg *jetstream.ConsumerConfig) (same bool) {
	filters := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		filters = []string{cfg.FilterSubject}
	}
	desc := "jetmail webhook " + h.cfg.Name
	same = cfg.Description == desc && cfg.AckPolicy == jetstream.AckExplicitPolicy &&
		cfg.AckWait == d.ackWait && cfg.MaxDeliver == -1 && cfg.MaxAckPending == d.opts.MaxAckPending &&
		slices.Equal(filters, d.opts.Subjects)
	cfg.Description = desc
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	cfg.AckWait = d.ackWait
	// MaxAge is enforced in code, from the stream timestamp.
	cfg.MaxDeliver = -1
	cfg.MaxAckPending = d.opts.MaxAckPending
	cfg.FilterSubject, cfg.FilterSubjects = "", slices.Clone(d.opts.Subjects)
	return same
}

// consume pulls a webhook's events into Concurrency POST slots until ctx
// ends or the pull fails.
func (d *Dispatcher) consume(ctx context.Context, h *hook, cons jetstream.Consumer) {
	// Now and then a pull request goes missing (seen in the tests: after
	// Naks at MaxAckPending, and when one worker finds the consumer while
	// another is still creating it); the iterator asks again once two
	// heartbeats have not come, so they are short.
	it, err := cons.Messages(jetstream.PullMaxMessages(d.opts.Concurrency), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		h.log.WarnContext(ctx, "cannot pull webhook events", "error", err)
		return
	}
	// POSTs in flight when ctx ends are finished (each within Timeout)
	// and settled, rather than cut off and sent again elsewhere.
	hctx := context.WithoutCancel(ctx)
	jobs := make(chan jetstream.Msg)
	var slots sync.WaitGroup
	for range d.opts.Concurrency {
		slots.Go(func() {
			for m := range jobs {
				d.handle(hctx, h, m)
			}
		})
	}
	// When ctx ends, drain: what is buffered comes out of Next and is
	// returned to the stream. A drain waits for a flush, which waits up to
	// 10s for a server that is gone, so Next is given a second for it;
	// what is still buffered then is handed out again after AckWait.
	nextCtx, giveUp := context.WithCancel(context.WithoutCancel(ctx))
	defer giveUp()
	drainDone := make(chan struct{})
	stopDrain := context.AfterFunc(ctx, func() {
		defer close(drainDone)
		it.Drain()
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-nextCtx.Done(): // the loop ended
		case <-t.C:
			giveUp()
		}
	})
	for {
		m, err := it.Next(jetstream.NextContext(nextCtx))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || nextCtx.Err() != nil {
				break
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				continue // the iterator asks again by itself
			}
			h.log.WarnContext(ctx, "pulling webhook events failed", "error", err)
			it.Stop()
			break
		}
		if ctx.Err() != nil {
			_ = m.Nak() // drained from the buffer during shutdown: another worker takes it
			continue
		}
		select {
		case jobs <- m:
		case <-ctx.Done():
			_ = m.Nak()
		}
	}
	giveUp()
	if !stopDrain() {
		<-drainDone
	}
	close(jobs)
	slots.Wait()
}

// ackVerb is how an event is settled with JetStream.
type ackVerb uint8

const (
	verbAck      ackVerb = iota + 1 // delivered, or not wanted
	verbNakDelay                    // try again after a delay
	verbTerm                        // dropped: never again
)

// verdict is what follows one delivery of an event to a webhook.
type verdict struct {
	verb    ackVerb
	delay   time.Duration // for verbNakDelay
	outcome string        // the deliveries_total outcome
}

// decide is the decision table of one delivery of an event, a pure
// function. posted is false when the event was already older than maxAge
// and no POST was made. A 2xx answer is delivered; any other answer, or
// none (err), is retried after retry.Delay(attempt) unless that retry
// would come when the event is older than maxAge: then it is dropped.
func decide(posted bool, status int, err error, age time.Duration, attempt int, maxAge time.Duration, retry RetryPolicy) verdict {
	if !posted {
		return verdict{verb: verbTerm, outcome: outcomeDropped}
	}
	if err == nil && status >= 200 && status <= 299 {
		return verdict{verb: verbAck, outcome: outcomeOK}
	}
	delay := retry.Delay(attempt)
	if age+delay > maxAge {
		return verdict{verb: verbTerm, outcome: outcomeDropped}
	}
	return verdict{verb: verbNakDelay, delay: delay, outcome: outcomeRetry}
}

// handle delivers one event to one webhook and settles it. It never logs
// the body or the secret.
func (d *Dispatcher) handle(ctx context.Context, h *hook, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		h.log.ErrorContext(ctx, "event without JetStream metadata", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	if !d.wanted(h, msg) {
		if err := msg.Ack(); err != nil {
			h.log.WarnContext(ctx, "cannot acknowledge a filtered event", "subject", msg.Subject(), "error", err)
		}
		return
	}
	id := eventID(msg, meta, d.names.ResultStream)
	attempt := int(meta.NumDelivered)
	var (
		status int
		perr   error
		posted bool
	)
	now := d.opts.Now()
	if now.Sub(meta.Timestamp) <= d.opts.MaxAge {
		posted = true
		pctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		status, _, perr = post(pctx, d.opts.HTTPClient, h.cfg, id, now, msg.Data(), false)
		cancel()
		if perr != nil && errors.Is(perr, context.DeadlineExceeded) {
			perr = fmt.Errorf("no answer within %s", d.opts.Timeout)
		}
		now = d.opts.Now()
	}
	age := now.Sub(meta.Timestamp)
	v := decide(posted, status, perr, age, attempt, d.opts.MaxAge, d.opts.Retry)

	// Counted before settling, so that whoever sees the event settled
	// sees it counted.
	var serr error
	switch v.verb {
	case verbAck:
		h.ok.Inc()
		serr = msg.Ack()
	case verbNakDelay:
		h.retry.Inc()
		serr = msg.NakWithDelay(v.delay)
	case verbTerm:
		h.dropped.Inc()
		serr = msg.Term()
	}
	if serr != nil {
		h.log.WarnContext(ctx, "cannot settle webhook event; JetStream will hand it out again", "webhook_id", id, "error", serr)
	}
	if v.outcome == outcomeOK {
		if h.log.Enabled(ctx, slog.LevelDebug) {
			h.log.DebugContext(ctx, "webhook delivered", "webhook_id", id, "subject", msg.Subject(), "attempt", attempt, "status", status)
		}
		return
	}
	args := []any{"webhook_id", id, "subject", msg.Subject(), "attempt", attempt, "age", age.Round(time.Millisecond)}
	if posted {
		args = append(args, "error", failure(status, perr))
	}
	switch {
	case v.verb == verbNakDelay:
		h.log.WarnContext(ctx, "webhook delivery failed; retrying", append(args, "retry_in", v.delay.Round(time.Millisecond))...)
	case posted:
		h.log.ErrorContext(ctx, "webhook delivery failed; dropping the event: the next retry would be past the maximum age", append(args, "max_age", d.opts.MaxAge)...)
	default:
		h.log.ErrorContext(ctx, "dropping a webhook event older than the maximum age", append(args, "max_age", d.opts.MaxAge)...)
	}
}

// failure describes a failed POST for the log: the answer's status, or
// the error without the URL (which may carry a token).
func failure(status int, err error) string {
	if err != nil {
		return withoutURL(err).Error()
	}
	if status >= 300 && status <= 399 {
		return fmt.Sprintf("answered %d (redirects are not followed)", status)
	}
	return fmt.Sprintf("answered %d", status)
}

// withoutURL is err without the "Post URL: " of a *url.Error: a URL may
// carry a token, and the log names the webhook anyway.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// wanted reports whether the webhook wants the event: every event when it
// has no States, else result events in one of them and every other event.
// An event whose State cannot be read is sent.
func (d *Dispatcher) wanted(h *hook, msg jetstream.Msg) bool {
	if len(h.cfg.States) == 0 || !strings.HasPrefix(msg.Subject(), d.names.Prefix+".result.") {
		return true
	}
	var ev struct{ State schema.State }
	if err := json.Unmarshal(msg.Data(), &ev); err != nil {
		return true
	}
	return h.cfg.wants(ev.State)
}

// eventID is the webhook-id of a stored event: its Nats-Msg-Id, which is
// unique per event and also the same when a worker publishes the event
// again after a crash (JetStream may store it twice; the receiver sees one
// id); else "<stream>-<sequence>". Both are the same on every retry.
func eventID(msg jetstream.Msg, meta *jetstream.MsgMetadata, stream string) string {
	if v := msg.Headers().Get(jetstream.MsgIDHeader); validEventID(v) {
		return v
	}
	return fmt.Sprintf("%s-%d", stream, meta.Sequence.Stream)
}

// validEventID accepts what fits in a header and in the signed content:
// 1 to 256 printable ASCII characters, no space.
func validEventID(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// watchPending refreshes jetmail_webhook_pending from the consumer until
// ctx ends.
func (d *Dispatcher) watchPending(ctx context.Context, h *hook) {
	tick := time.NewTicker(d.opts.PendingInterval)
	defer tick.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := d.js.Consumer(ictx, d.names.ResultStream, h.consumer)
		cancel()
		if err == nil {
			info := c.CachedInfo()
			h.pending.Set(float64(info.NumPending) + float64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
