package deploy

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// The lanes of CONTRACT §7 in the alerts and the dashboard: the queue
// depth has a lane label, and every worker reports the same lane
// consumers.

// checkQueuePendingByLane checks how each expression aggregates
// jetmail_queue_pending: the nearest aggregation above the selector must be
// max (or min, avg) across workers, which report the same numbers, never
// sum or count; and unless the selector picks one lane, it must keep the
// lane (max by (lane)), so that the lanes are added up only after that:
// sum(max by (lane) (jetmail_queue_pending)). max(jetmail_queue_pending)
// would be the deepest lane, not the queue.
func checkQueuePendingByLane(t reporter, exprs []promExpr) {
	t.Helper()
	for _, e := range exprs {
		ex, ok := parseExpr(t, e)
		if !ok {
			continue
		}
		parser.Inspect(ex, func(n parser.Node, path []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok || vs.Name != "jetmail_queue_pending" {
				return nil
			}
			oneLane := slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
				return m.Name == "lane" && m.Type == labels.MatchEqual
			})
			var agg *parser.AggregateExpr
			for i := len(path) - 1; i >= 0 && agg == nil; i-- {
				agg, _ = path[i].(*parser.AggregateExpr)
			}
			switch {
			case agg == nil:
				t.Errorf("%s: jetmail_queue_pending is not aggregated across workers (take max by (lane)): %s", e.Where, e.Expr)
			case agg.Op != parser.MAX && agg.Op != parser.MIN && agg.Op != parser.AVG:
				t.Errorf("%s: %s over jetmail_queue_pending counts each worker's report; take max by (lane) first: %s", e.Where, agg.Op, e.Expr)
			case !oneLane && (agg.Without || !slices.Contains(agg.Grouping, "lane")):
				t.Errorf("%s: %s over jetmail_queue_pending without by (lane) is the deepest lane, not the queue; take sum(max by (lane) (…)): %s", e.Where, agg.Op, e.Expr)
			}
			return nil
		})
	}
}

// TestQueuePendingByLane checks the alerts and the dashboard with
// checkQueuePendingByLane, and that the check can fail.
func TestQueuePendingByLane(t *testing.T) {
	exprs := append(alertExprs(t), dashboardExprs(t)...)
	checkQueuePendingByLane(t, exprs)
	uses := 0
	for _, e := range exprs {
		if strings.Contains(e.Expr, "jetmail_queue_pending") {
			uses++
		}
	}
	if uses < 6 {
		t.Errorf("only %d expressions use jetmail_queue_pending", uses)
	}

	check := func(expr string) func(r reporter) {
		return func(r reporter) { checkQueuePendingByLane(r, []promExpr{{Where: "x", Expr: expr}}) }
	}
	mustFail(t, "max over lanes", "without by (lane)", check(`max(jetmail_queue_pending) > 1000`))
	mustFail(t, "max of deriv over lanes", "without by (lane)", check(`max(deriv(jetmail_queue_pending[15m])) > 0`))
	mustFail(t, "sum over workers", "counts each worker", check(`sum by (lane) (jetmail_queue_pending)`))
	mustFail(t, "no aggregation", "not aggregated", check(`jetmail_queue_pending > 0`))
	mustFail(t, "without", "without by (lane)", check(`max without (instance) (jetmail_queue_pending)`))
	for _, good := range []string{
		`sum(max by (lane) (jetmail_queue_pending))`,
		`max by (lane) (jetmail_queue_pending)`,
		`max(jetmail_queue_pending{lane="urgent"}) > 0`,
		`sum(max by (lane) (deriv(jetmail_queue_pending[15m]))) > 0 and on () sum(max by (lane) (jetmail_queue_pending)) > 100`,
	} {
		r := &recorder{}
		check(good)(r)
		if len(r.errs) > 0 {
			t.Errorf("%s: a good expression failed the check: %v", good, r.errs)
		}
	}
}

// TestLaneAlertAndPanels checks what the lanes, schedules and cancellations
// add: the urgent backlog alert, and the dashboard panels for the queue
// depth by lane, the urgent requests waiting, the scheduled messages and
// the cancellations.
func TestLaneAlertAndPanels(t *testing.T) {
	var urgent promExpr
	for _, e := range alertExprs(t) {
		if e.Where == "alerts.yml JetmailUrgentBacklog" {
			urgent = e
		}
	}
	switch {
	case urgent.Rule == nil:
		t.Error("alerts.yml has no alert JetmailUrgentBacklog")
	case strings.Join(strings.Fields(urgent.Expr), " ") != `max(jetmail_queue_pending{lane="urgent"}) > 0`:
		t.Errorf("JetmailUrgentBacklog: expr %q", urgent.Expr)
	case getString(urgent.Rule, "for") != "2m" || getString(urgent.Rule, "labels", "severity") != "critical":
		t.Errorf("JetmailUrgentBacklog: for %q, severity %q; want 2m and critical",
			getString(urgent.Rule, "for"), getString(urgent.Rule, "labels", "severity"))
	}

	dash := loadJSON(t, dashboardFile)
	for _, want := range []struct{ typ, expr string }{
		{"timeseries", `max by (lane) (jetmail_queue_pending)`},
		{"stat", `max(jetmail_queue_pending{lane="urgent"})`},
		{"timeseries", `max(jetmail_scheduled)`},
		{"timeseries", `sum(rate(jetmail_cancelled_total[$__rate_interval]))`},
		{"stat", `sum(max by (lane) (jetmail_queue_pending))`},
		{"timeseries", `sum(max by (lane) (jetmail_queue_pending))`},
	} {
		found := false
		for _, p := range allPanels(dash) {
			for _, tg := range getList(p, "targets") {
				found = found || (getString(p, "type") == want.typ && getString(tg, "expr") == want.expr)
			}
		}
		if !found {
			t.Errorf("the dashboard has no %s panel with the query %s", want.typ, want.expr)
		}
	}
}
