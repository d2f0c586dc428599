package console

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/webhook"
)

// overview is what the overview page shows.
type overview struct {
	// Lanes are the lanes' consumers, urgent first.
	Lanes []laneStat
	// Waiting is the requests waiting for a worker, over the lanes.
	Waiting uint64
	// AckPending is the requests taken by workers and not yet settled,
	// those waiting for a retry included, over the lanes.
	AckPending int
	// Scheduled is the requests waiting for their SendAt; -1 when unknown.
	Scheduled int
	// Workers are the workers heard from recently.
	Workers []workerView
	// InFlight and Slots are the deliveries the workers hold, and the
	// most they would hold at once.
	InFlight, Slots int
	// SMTP is the open SMTP connections of the workers.
	SMTP int
	// Webhooks are the webhooks' consumers, by name.
	Webhooks []hookStat
	// Backlog is the events not yet delivered to the webhooks.
	Backlog uint64
	// Chart is the result events per 30 s of the last 15 minutes.
	Chart chart
	// Sent, Deferred and Failed count the events of the chart.
	Sent, Deferred, Failed int
	// CatchingUp says that the chart has not read every event yet.
	CatchingUp bool
	// Unread says that the chart's first bars were not read.
	Unread bool
	// Problems are what could not be read, for the page to say.
	Problems []string
	// Time is when the numbers were read.
	Time time.Time
}

// laneStat is one lane's durable consumer.
type laneStat struct {
	Lane       schema.Lane
	Waiting    uint64
	AckPending int
	// Pct is Waiting as a share of the fullest lane's, for the bar.
	Pct float64
}

// hookStat is one webhook's consumer on the result stream.
type hookStat struct {
	Name       string
	Pending    uint64
	AckPending int
}

// overviewSource reads the overview, at most once per overviewMaxAge
// however many browsers poll.
type overviewSource struct {
	c     *Console
	tally *tally
	mu    sync.Mutex
	last  *overview
}

// overviewMaxAge is how long a read overview is served again.
const overviewMaxAge = 1500 * time.Millisecond

func newOverviewSource(c *Console) *overviewSource {
	return &overviewSource{c: c, tally: newTally(c.js, c.names)}
}

// get returns a recent overview, reading a new one when the last is older
// than overviewMaxAge.
func (o *overviewSource) get(ctx context.Context) *overview {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.c.now()
	if o.last != nil && now.Sub(o.last.Time) < overviewMaxAge {
		return o.last
	}
	o.last = o.read(ctx, now)
	return o.last
}

// read reads every number of the overview. What cannot be read is left at
// zero and named in Problems.
func (o *overviewSource) read(ctx context.Context, now time.Time) *overview {
	c := o.c
	ov := &overview{Time: now, Scheduled: -1}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	var most uint64
	for _, l := range config.Lanes {
		st := laneStat{Lane: l}
		cons, err := c.js.Consumer(ctx, c.names.RequestStream, c.names.LaneConsumer(l))
		if err != nil {
			ov.Problems = append(ov.Problems, problem("the "+string(l)+" lane's consumer", err))
		} else if info := cons.CachedInfo(); info != nil {
			st.Waiting, st.AckPending = info.NumPending, info.NumAckPending
		}
		ov.Waiting += st.Waiting
		ov.AckPending += st.AckPending
		most = max(most, st.Waiting)
		ov.Lanes = append(ov.Lanes, st)
	}
	for i := range ov.Lanes {
		if most > 0 {
			ov.Lanes[i].Pct = math.Round(1000*float64(ov.Lanes[i].Waiting)/float64(most)) / 10
		}
	}
	if n, err := o.countScheduled(ctx); err != nil {
		ov.Problems = append(ov.Problems, problem("the scheduled requests", err))
	} else {
		ov.Scheduled = n
	}
	if err := o.readWebhooks(ctx, ov); err != nil {
		ov.Problems = append(ov.Problems, problem("the webhooks' consumers", err))
	}

	ov.Workers = c.workers.list()
	for _, w := range ov.Workers {
		ov.InFlight += w.InFlight
		ov.Slots += w.Concurrency
		ov.SMTP += w.SMTP
	}

	if err := o.tally.refresh(ctx, now); err != nil {
		ov.Problems = append(ov.Problems, problem("the result events", err))
	}
	series, unread, behind := o.tally.series(now)
	ov.CatchingUp, ov.Unread = behind, unread > 0
	for _, b := range series[unread:] {
		ov.Sent += b[countSent]
		ov.Deferred += b[countDeferred]
		ov.Failed += b[countFailed]
	}
	ov.Chart = drawChart(series, unread, now)
	return ov
}

// countScheduled counts the requests waiting for their SendAt (as the
// worker's jetmail_scheduled does).
func (o *overviewSource) countScheduled(ctx context.Context) (int, error) {
	return config.CountScheduled(ctx, o.c.js, o.c.names)
}

// readWebhooks reads the webhooks' durable consumers on the result stream:
// their pending events are the backlog.
func (o *overviewSource) readWebhooks(ctx context.Context, ov *overview) error {
	s, err := o.c.js.Stream(ctx, o.c.names.ResultStream)
	if err != nil {
		return err
	}
	list := s.ListConsumers(ctx)
	for info := range list.Info() {
		name, ok := strings.CutPrefix(info.Name, webhook.ConsumerPrefix)
		if !ok {
			continue
		}
		ov.Webhooks = append(ov.Webhooks, hookStat{Name: name, Pending: info.NumPending, AckPending: info.NumAckPending})
		ov.Backlog += info.NumPending + uint64(info.NumAckPending)
	}
	slices.SortFunc(ov.Webhooks, func(a, b hookStat) int { return strings.Compare(a.Name, b.Name) })
	if err := list.Err(); err != nil && err != jetstream.ErrEndOfData {
		return err
	}
	return nil
}

// overviewPage is /ui/.
func (c *Console) overviewPage(rw http.ResponseWriter, r *http.Request, s *session) {
	c.render(rw, r, s, http.StatusOK, "overview", "Overview", "overview", c.stats.get(r.Context()))
}

// overviewLive is the overview's live part, which the page's script
// fetches every few seconds.
func (c *Console) overviewLive(rw http.ResponseWriter, r *http.Request, s *session) {
	c.fragment(rw, "overview", "overview-live", s, c.stats.get(r.Context()))
}

// chart is the overview's bar chart, drawn as inline SVG by the template:
// numbers in the SVG's own units.
type chart struct {
	W, H   int
	Bars   []chartBar
	Ticks  []chartTick
	Labels []chartLabel
	// Empty says that there is no event to show.
	Empty bool
	// Left, Right, Top and Bottom bound the plot area; PlotH is its
	// height, MidX and MidY its middle.
	Left, Right, Top, Bottom, PlotH, MidX, MidY float64
}

// chartBar is one bucket: stacked segments, and a tooltip.
type chartBar struct {
	X, W  float64
	Segs  []chartSeg
	Title string
}

// chartSeg is one state's part of a bar.
type chartSeg struct {
	Y, H  float64
	Class string
}

// chartTick is a horizontal grid line with its value.
type chartTick struct {
	Y     float64
	Label string
}

// chartLabel is a time under the bars.
type chartLabel struct {
	X      float64
	Label  string
	Anchor string
}

// drawChart lays out the bars of series, the last bucket being now's; the
// first unread buckets were not read and are drawn as such.
func drawChart(series [][countStates]int, unread int, now time.Time) chart {
	ch := chart{W: 1000, H: 190, Left: 36, Right: 996, Top: 8, Bottom: 166}
	most := 0
	for _, b := range series[unread:] {
		most = max(most, b[countSent]+b[countDeferred]+b[countFailed])
	}
	ch.Empty = most == 0
	top := niceCeil(most)
	plotH := ch.Bottom - ch.Top
	ch.PlotH, ch.MidX, ch.MidY = plotH, (ch.Left+ch.Right)/2, ch.Top+plotH/2
	for _, f := range []float64{0, 0.5, 1} {
		ch.Ticks = append(ch.Ticks, chartTick{Y: round1(ch.Bottom - f*plotH), Label: formatNum(int(f * float64(top)))})
	}
	slot := (ch.Right - ch.Left) / float64(len(series))
	classes := [countStates]string{"seg-sent", "seg-deferred", "seg-failed"}
	what := [countStates]string{"sent", "deferred", "failed"}
	start := time.Unix(bucketOf(now), 0).Add(-time.Duration(len(series)-1) * tallyBucket).UTC()
	for i, b := range series {
		x := ch.Left + float64(i)*slot
		bar := chartBar{X: round1(x + slot*0.14), W: round1(slot * 0.72)}
		from := start.Add(time.Duration(i) * tallyBucket)
		if i < unread {
			bar.Segs = []chartSeg{{Y: ch.Top, H: round1(plotH), Class: "seg-unread"}}
			bar.Title = from.Format("15:04:05") + "–" + from.Add(tallyBucket).Format("15:04:05") + " UTC: not read (too many events to read at once)"
			ch.Bars = append(ch.Bars, bar)
			continue
		}
		y := ch.Bottom
		var parts []string
		for k := range countStates {
			if b[k] == 0 {
				continue
			}
			h := plotH * float64(b[k]) / float64(top)
			h = max(h, 1.5)
			y -= h
			bar.Segs = append(bar.Segs, chartSeg{Y: round1(y), H: round1(h), Class: classes[k]})
			parts = append(parts, fmt.Sprintf("%d %s", b[k], what[k]))
		}
		if len(parts) == 0 {
			parts = []string{"no events"}
		}
		bar.Title = from.Format("15:04:05") + "–" + from.Add(tallyBucket).Format("15:04:05") + " UTC: " + strings.Join(parts, ", ")
		ch.Bars = append(ch.Bars, bar)
	}
	for _, l := range []struct {
		at     int
		label  string
		anchor string
	}{{0, "15 min ago", "start"}, {10, "10 min", "middle"}, {20, "5 min", "middle"}, {len(series) - 1, "now", "end"}} {
		x := ch.Left + float64(l.at)*slot
		switch l.anchor {
		case "middle":
			x += slot / 2
		case "end":
			x += slot
		}
		ch.Labels = append(ch.Labels, chartLabel{X: round1(x), Label: l.label, Anchor: l.anchor})
	}
	return ch
}

// niceCeil is the least of 4, 10, 20, 40, 100, 200, 400, … at or above
// n: even, so that the middle grid line is a whole number.
func niceCeil(n int) int {
	if n <= 4 {
		return 4
	}
	for p := 10; ; p *= 10 {
		for _, m := range []int{1, 2, 4} {
			if m*p >= n {
				return m * p
			}
		}
	}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }
