package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// The ceiling mode: what one stream carries without SMTP. The requests of
// the end-to-end phase are published to the request stream (the work
// queue the workers read, created as they create it) and pulled and
// acknowledged by the bench, with the workers' consumer: three of the six
// JetStream operations a message costs end-to-end, on one `jetmail
// server` (R1) and on a loopback cluster (R3).

// ceilingPull is the number of messages the ceiling's consumer keeps
// buffered: enough that the client never waits on the server.
const ceilingPull = 1000

// ceilingRow is the ceiling of one size, durability and replica count.
type ceilingRow struct {
	Size       string       `json:"size"`
	WireBytes  int          `json:"wire_bytes"`
	Durability string       `json:"durability"`
	Replicas   int          `json:"replicas"`
	Runs       []phaseStats `json:"runs"`
	Median     phaseStats   `json:"median"`
}

// ceilingMode measures the ceiling for each replica count, --runs times.
func (b *bencher) ceilingMode(ctx context.Context, size benchSize, durability string) error {
	msg, err := b.message(size)
	if err != nil {
		return err
	}
	for _, replicas := range b.plan.replicas {
		row := ceilingRow{Size: size.Name, WireBytes: msg.wireBytes, Durability: durability, Replicas: replicas}
		for run := 1; run <= b.f.Runs; run++ {
			st, err := b.ceilingRun(ctx, msg, b.f.Messages, durability, replicas)
			if err != nil {
				return fmt.Errorf("R%d: %w", replicas, err)
			}
			row.Runs = append(row.Runs, st)
			b.logf("ceiling %s %s R%d run %d/%d: %s msg/s; server CPU %s ms/msg", size.Name, durability, replicas, run,
				b.f.Runs, thousands(st.Rate), nodeCPUList(st.Processes))
		}
		row.Median = medianPhase(row.Runs)
		b.report.Ceiling = append(b.report.Ceiling, row)
	}
	return nil
}

// nodeCPUList is the CPU ms per message of the server processes, the
// leader first.
func nodeCPUList(ps []procStats) string {
	var parts []string
	for _, p := range ps {
		if p.Role == "server" {
			name := p.Name
			if p.Node != "" {
				name += " (" + p.Node + ")"
			}
			parts = append(parts, fmt.Sprintf("%s %.3f", name, p.CPUMsPerMsg))
		}
	}
	return strings.Join(parts, ", ")
}

func (b *bencher) ceilingRun(ctx context.Context, msg *benchMessage, n int, durability string, replicas int) (phaseStats, error) {
	nodes, cleanup, err := b.startServerProcs(ctx, durability, replicas)
	if err != nil {
		return phaseStats{}, err
	}
	defer cleanup()
	urls := make([]string, len(nodes))
	for i, nd := range nodes {
		urls[i] = nd.url
	}
	srv := &benchServer{url: strings.Join(urls, ","), names: schema.DefaultNames()}
	streams := config.Streams{Names: srv.names, Replicas: replicas}

	nc, err := nats.Connect(srv.url, nats.Name("jetmail bench ceiling consumer"))
	if err != nil {
		return phaseStats{}, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return phaseStats{}, err
	}
	// A new cluster elects its meta leader first; until then a request to
	// create a stream fails or goes unanswered.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stream jetstream.Stream
	for {
		actx, acancel := context.WithTimeout(sctx, 2*time.Second)
		stream, err = js.CreateOrUpdateStream(actx, streams.RequestStream())
		acancel()
		if err == nil {
			break
		}
		if sctx.Err() != nil {
			return phaseStats{}, fmt.Errorf("create the request stream on R%d: %w", replicas, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cons, err := stream.CreateOrUpdateConsumer(sctx, streams.LaneConsumer(schema.LaneNormal))
	if err != nil {
		return phaseStats{}, fmt.Errorf("create the consumer: %w", err)
	}
	info, err := stream.Info(sctx)
	if err != nil {
		return phaseStats{}, err
	}
	leader := ""
	if info.Cluster != nil {
		leader = info.Cluster.Leader
	}
	// The processes are named by what they are for this stream, so that
	// medians over runs compare the leader with the leader.
	var procs []*measured
	followers := 0
	for _, nd := range nodes {
		m := measureChild("server", nd.child)
		if replicas > 1 {
			m.node = nd.name
			if nd.name == leader {
				m.name = "leader"
			} else {
				followers++
				m.name = fmt.Sprintf("follower %d", followers)
			}
		}
		procs = append(procs, m)
	}
	slices.SortStableFunc(procs, func(a, b *measured) int { return strings.Compare(a.name, b.name) })

	prefix := idPrefix(runTag())
	pub, err := newBenchPublisher(srv, msg, prefix, b.f.Timeout)
	if err != nil {
		return phaseStats{}, err
	}
	defer pub.close()

	it, err := cons.Messages(jetstream.PullMaxMessages(ceilingPull))
	if err != nil {
		return phaseStats{}, fmt.Errorf("pull: %w", err)
	}
	defer it.Stop()
	var redelivered atomic.Int64
	consumed := make(chan error, 1)
	m := startMeter(append(procs, measureSelf())...)
	go func() {
		for i := 1; i <= n; i++ {
			msg, err := it.Next()
			if err != nil {
				consumed <- fmt.Errorf("pull after %d of %d messages: %w", i-1, n, err)
				return
			}
			if md, err := msg.Metadata(); err == nil && md.NumDelivered > 1 {
				redelivered.Add(1)
			}
			if i < n {
				err = msg.Ack()
			} else {
				// Acknowledgements on a connection are handled in order:
				// when the last is confirmed, all are.
				actx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err = msg.DoubleAck(actx)
				cancel()
			}
			if err != nil {
				consumed <- fmt.Errorf("ack: %w", err)
				return
			}
		}
		consumed <- nil
	}()
	for i := range n {
		if err := pub.publish(i); err != nil {
			return phaseStats{}, fmt.Errorf("publish %d: %w", i, err)
		}
	}
	if err := pub.wait(ctx); err != nil {
		return phaseStats{}, err
	}
	select {
	case err := <-consumed:
		if err != nil {
			return phaseStats{}, err
		}
	case <-ctx.Done():
		return phaseStats{}, ctx.Err()
	case <-time.After(b.f.Timeout):
		return phaseStats{}, errors.New("the consumer did not get every message in time")
	}
	st := m.stats(n, time.Now())
	st.SinkCount = int64(n)
	if r := redelivered.Load(); r > 0 {
		b.problem("ceiling R%d: %d messages were delivered more than once", replicas, r)
	}
	// Work queue: an acknowledged message is deleted.
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := stream.Info(ctx)
		if err == nil && info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			left := uint64(0)
			if info != nil {
				left = info.State.Msgs
			}
			b.problem("ceiling R%d: %d messages left in the stream after every acknowledgement (%v)", replicas, left, err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return st, nil
}
