package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/jetmail/jetmail/schema"
)

// The lanes mode (issue 10): a bulk backlog drains while urgent and normal
// requests arrive at a steady rate, as a newsletter meets password resets
// and order confirmations. It reports, per lane, the delay from publish to
// the sent result (the worker publishes it right after the relay's 250),
// and which share of the deliveries bulk kept while the other lanes had
// work: the lane scheduler must put urgent and normal first without
// starving bulk.

// laneStats are one lane's figures in a lanes run.
type laneStats struct {
	Lane      string       `json:"lane"`
	Messages  int          `json:"messages"`
	Latency   latencyStats `json:"latency_ms"`
	DuringWin int          `json:"sent_during_window"` // sent while urgent and normal were published
}

// lanesRun is one run of the lanes mode.
type lanesRun struct {
	Backlog       int         `json:"backlog"`
	WindowSeconds float64     `json:"window_seconds"`
	Lanes         []laneStats `json:"lanes"`
	BulkShare     float64     `json:"bulk_share"`      // of the deliveries during the window
	BulkRate      float64     `json:"bulk_rate"`       // bulk sent per second during the window
	BulkAloneRate float64     `json:"bulk_alone_rate"` // before the window
}

// lanesRow is the lanes mode's result for one size and durability.
type lanesRow struct {
	Size       string     `json:"size"`
	WireBytes  int        `json:"wire_bytes"`
	Durability string     `json:"durability"`
	Runs       []lanesRun `json:"runs"`
	Median     lanesRun   `json:"median"`
}

// laneTraffic is what the lanes mode publishes on one lane.
type laneTraffic struct {
	lane schema.Lane
	rate float64 // per second during the window; 0 for the backlog
}

func (b *bencher) lanesMode(ctx context.Context, size benchSize, durability string) error {
	msg, err := b.message(size)
	if err != nil {
		return err
	}
	row := lanesRow{Size: size.Name, WireBytes: msg.wireBytes, Durability: durability}
	for run := 1; run <= b.f.Runs; run++ {
		r, err := b.lanesRun(ctx, msg, durability)
		if err != nil {
			return err
		}
		row.Runs = append(row.Runs, r)
		u, n := r.Lanes[0], r.Lanes[1]
		b.logf("lanes %s %s run %d/%d: urgent p99 %.1f ms, normal p99 %.1f ms, bulk share %.0f %% at %s msg/s",
			size.Name, durability, run, b.f.Runs, u.Latency.P99, n.Latency.P99, 100*r.BulkShare, thousands(r.BulkRate))
	}
	med := lanesRun{
		Backlog:       row.Runs[0].Backlog,
		WindowSeconds: median(row.Runs, func(r lanesRun) float64 { return r.WindowSeconds }),
		BulkShare:     median(row.Runs, func(r lanesRun) float64 { return r.BulkShare }),
		BulkRate:      median(row.Runs, func(r lanesRun) float64 { return r.BulkRate }),
		BulkAloneRate: median(row.Runs, func(r lanesRun) float64 { return r.BulkAloneRate }),
	}
	for i := range row.Runs[0].Lanes {
		at := func(r lanesRun) laneStats { return r.Lanes[i] }
		med.Lanes = append(med.Lanes, laneStats{
			Lane:      row.Runs[0].Lanes[i].Lane,
			Messages:  int(median(row.Runs, func(r lanesRun) float64 { return float64(at(r).Messages) })),
			DuringWin: int(median(row.Runs, func(r lanesRun) float64 { return float64(at(r).DuringWin) })),
			Latency: latencyStats{
				P50: median(row.Runs, func(r lanesRun) float64 { return at(r).Latency.P50 }),
				P90: median(row.Runs, func(r lanesRun) float64 { return at(r).Latency.P90 }),
				P99: median(row.Runs, func(r lanesRun) float64 { return at(r).Latency.P99 }),
				Max: median(row.Runs, func(r lanesRun) float64 { return at(r).Latency.Max }),
			},
		})
	}
	row.Median = med
	b.report.Lanes = append(b.report.Lanes, row)
	return nil
}

// lanesRun publishes the bulk backlog, waits until the workers are
// draining it, then publishes urgent and normal requests at their rates
// for --duration (or until bulk is nearly drained), and waits for every
// final result.
func (b *bencher) lanesRun(ctx context.Context, msg *benchMessage, durability string) (lanesRun, error) {
	srv, err := b.startServer(ctx, durability)
	if err != nil {
		return lanesRun{}, err
	}
	defer srv.cleanup()
	sink, err := b.startSink()
	if err != nil {
		return lanesRun{}, err
	}
	defer sink.Close()
	stopWorkers, _, err := b.startWorkers(ctx, srv, sink.URL())
	if err != nil {
		return lanesRun{}, err
	}
	defer stopWorkers()

	traffic := []laneTraffic{{schema.LaneUrgent, b.f.UrgentRate}, {schema.LaneNormal, b.f.NormalRate}, {schema.LaneBulk, 0}}
	window := b.f.Duration
	counts := map[schema.Lane]int{
		schema.LaneUrgent: max(1, int(b.f.UrgentRate*window.Seconds())),
		schema.LaneNormal: max(1, int(b.f.NormalRate*window.Seconds())),
		schema.LaneBulk:   b.f.LanesBacklog,
	}
	tag := runTag()
	pubs := map[schema.Lane]*benchPublisher{}
	trackers := map[schema.Lane]*resultTracker{}
	for _, tr := range traffic {
		prefix := idPrefix(tag + string(tr.lane[0]))
		p, err := newBenchPublisher(srv, msg, prefix, b.f.Timeout)
		if err != nil {
			return lanesRun{}, err
		}
		defer p.close()
		p.subject = srv.names.LaneSubject(tr.lane)
		pubs[tr.lane] = p
		t, err := newResultTracker(srv, prefix, counts[tr.lane])
		if err != nil {
			return lanesRun{}, err
		}
		defer t.close()
		trackers[tr.lane] = t
	}

	// The backlog, as fast as JetStream takes it.
	bulk, bulkT := pubs[schema.LaneBulk], trackers[schema.LaneBulk]
	start := time.Now()
	for i := range counts[schema.LaneBulk] {
		bulkT.published[i].Store(time.Now().UnixNano())
		if err := bulk.publish(i); err != nil {
			return lanesRun{}, fmt.Errorf("publish bulk %d: %w", i, err)
		}
	}
	// The steady traffic starts once bulk drains at full speed: a tenth
	// of the backlog sent.
	for bulkT.finals.Load() < int64(counts[schema.LaneBulk]/10) {
		select {
		case <-ctx.Done():
			return lanesRun{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		case <-time.After(time.Until(start.Add(b.f.Timeout))):
			return lanesRun{}, fmt.Errorf("bulk backlog not draining: %d sent after %s", bulkT.finals.Load(), b.f.Timeout)
		}
	}
	winStart := time.Now()
	aloneRate := float64(bulkT.finals.Load()) / winStart.Sub(start).Seconds()
	type lanePace struct {
		lane  schema.Lane
		every time.Duration
		next  int
	}
	paces := []*lanePace{
		{lane: schema.LaneUrgent, every: time.Duration(float64(time.Second) / b.f.UrgentRate)},
		{lane: schema.LaneNormal, every: time.Duration(float64(time.Second) / b.f.NormalRate)},
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		// The next publish due, of whichever lane.
		var due *lanePace
		var at time.Time
		for _, p := range paces {
			if p.next >= counts[p.lane] {
				continue
			}
			t := winStart.Add(time.Duration(p.next) * p.every)
			if due == nil || t.Before(at) {
				due, at = p, t
			}
		}
		if due == nil {
			break
		}
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return lanesRun{}, ctx.Err()
			}
		}
		trackers[due.lane].published[due.next].Store(time.Now().UnixNano())
		if err := pubs[due.lane].publish(due.next); err != nil {
			return lanesRun{}, fmt.Errorf("publish %s %d: %w", due.lane, due.next, err)
		}
		due.next++
	}
	winEnd := time.Now()
	for _, tr := range traffic {
		if err := pubs[tr.lane].wait(ctx); err != nil {
			return lanesRun{}, err
		}
	}
	for _, tr := range traffic {
		if err := trackers[tr.lane].wait(ctx, b.f.Timeout); err != nil {
			return lanesRun{}, fmt.Errorf("%s lane: %w", tr.lane, err)
		}
	}
	stopWorkers()
	r := lanesRun{Backlog: counts[schema.LaneBulk], WindowSeconds: winEnd.Sub(winStart).Seconds(), BulkAloneRate: aloneRate}
	var inWindow, bulkInWindow int
	total := 0
	for _, tr := range traffic {
		t := trackers[tr.lane]
		ls := laneStats{Lane: string(tr.lane), Messages: counts[tr.lane], Latency: percentiles(t.latencies())}
		for i := range t.n {
			if t.sent[i] == 0 {
				continue
			}
			arrived := time.Unix(0, t.published[i].Load()+t.latency[i])
			if !arrived.Before(winStart) && arrived.Before(winEnd) {
				ls.DuringWin++
			}
		}
		inWindow += ls.DuringWin
		if tr.lane == schema.LaneBulk {
			bulkInWindow = ls.DuringWin
		}
		total += counts[tr.lane]
		r.Lanes = append(r.Lanes, ls)
	}
	if inWindow > 0 {
		r.BulkShare = float64(bulkInWindow) / float64(inWindow)
	}
	r.BulkRate = float64(bulkInWindow) / r.WindowSeconds
	got := awaitSinkCount(sink, int64(total))
	if got != int64(total) {
		b.problem("lanes: the sink received %d messages, want %d", got, total)
	}
	for _, tr := range traffic {
		t := trackers[tr.lane]
		if f := t.failed.Load(); f > 0 {
			b.problem("lanes: %d %s requests failed; the first: %v", f, tr.lane, t.firstFail.Load())
		}
		if d := t.dups.Load(); d > 0 {
			b.problem("lanes: %d %s messages sent twice", d, tr.lane)
		}
	}
	if bulkT.finals.Load() > 0 && winEnd.After(bulkT.end) {
		b.note("lanes: the bulk backlog was drained before the window ended; give a larger --lanes-backlog or a shorter --duration")
	}
	return r, nil
}

// printLanes writes the lanes mode's table and its goals.
func printLanes(w io.Writer, rep *benchReport) {
	fmt.Fprintf(w, "\n### Lanes: a bulk backlog drains while urgent and normal requests arrive at a steady rate (%d worker(s), concurrency %d)\n\n",
		rep.Settings.Workers, rep.Settings.Concurrency)
	var rows [][]string
	for _, r := range rep.Lanes {
		m := r.Median
		for _, l := range m.Lanes {
			row := []string{sizeLabel(r.Size, r.WireBytes), r.Durability, l.Lane, thousands(float64(l.Messages)),
				ms(l.Latency.P50), ms(l.Latency.P99), ms(l.Latency.Max), thousands(float64(l.DuringWin))}
			rows = append(rows, row)
		}
	}
	head := []string{"size", "durability", "lane", "messages", "p50 ms", "p99 ms", "max ms", "sent in the window"}
	mdTable(w, head, rightAligned(len(head), 3), rows)
	fmt.Fprintln(w, "\nDelay: publish → the sent result (published by the worker right after the relay's 250).")
	fmt.Fprintln(w, "Goals: urgent p99 < 500 ms, normal p99 < 2 s while bulk drains at full speed, bulk ≥ 10 % of the deliveries:")
	for _, r := range rep.Lanes {
		m := r.Median
		u := m.Lanes[slices.IndexFunc(m.Lanes, func(l laneStats) bool { return l.Lane == "urgent" })]
		n := m.Lanes[slices.IndexFunc(m.Lanes, func(l laneStats) bool { return l.Lane == "normal" })]
		fmt.Fprintf(w, "- %s %s: urgent p99 %s ms %s; normal p99 %s ms %s; bulk %.0f %% of the deliveries in the %.1f s window %s, at %s msg/s (%s msg/s alone before it)\n",
			r.Size, r.Durability, ms(u.Latency.P99), verdict(u.Latency.P99 < 500), ms(n.Latency.P99), verdict(n.Latency.P99 < 2000),
			100*m.BulkShare, m.WindowSeconds, verdict(m.BulkShare >= 0.10 && !math.IsNaN(m.BulkShare)), thousands(m.BulkRate), thousands(m.BulkAloneRate))
	}
}
