package deploy

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// A promExpr is one PromQL expression of the alert rules or the dashboard.
type promExpr struct {
	Where string // "alerts.yml JetmailWorkerDown", "jetmail.json panel \"…\" A"
	Expr  string // as written (Grafana variables replaced)
	Rule  any    // the alert rule, for alerts
}

var promqlParser = parser.NewParser(parser.Options{})

// grafanaVar matches Grafana's built-in interval variables, which are not
// PromQL; they are replaced with a duration before parsing.
var grafanaVar = regexp.MustCompile(`\$(__rate_interval|__interval|__range)(_ms|_s)?\b|\$\{(__rate_interval|__interval|__range)\}`)

// alertExprs returns the expressions of every rule in alerts.yml.
func alertExprs(t testing.TB) []promExpr {
	t.Helper()
	doc := loadYAMLDoc(t, alertsFile)
	var out []promExpr
	for gi, g := range getList(doc, "groups") {
		for ri, r := range getList(g, "rules") {
			name := getString(r, "alert")
			if name == "" {
				name = getString(r, "record")
			}
			if name == "" {
				name = fmt.Sprintf("group %d rule %d", gi, ri)
			}
			out = append(out, promExpr{Where: "alerts.yml " + name, Expr: getString(r, "expr"), Rule: r})
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no rules", alertsFile)
	}
	return out
}

// dashboardExprs returns the expressions of every panel target of the
// dashboard, with Grafana's interval variables replaced by 5m.
func dashboardExprs(t testing.TB) []promExpr {
	t.Helper()
	return dashboardExprsOf(t, loadJSON(t, dashboardFile))
}

func dashboardExprsOf(t reporter, dash any) []promExpr {
	var out []promExpr
	for _, p := range allPanels(dash) {
		for _, tg := range getList(p, "targets") {
			expr := getString(tg, "expr")
			where := fmt.Sprintf("jetmail.json panel %q target %s", getString(p, "title"), getString(tg, "refId"))
			if strings.TrimSpace(expr) == "" {
				t.Errorf("%s: no expr", where)
				continue
			}
			expr = grafanaVar.ReplaceAllString(expr, "5m")
			if strings.Contains(expr, "$") {
				t.Errorf("%s: uses a dashboard variable the test does not know: %s", where, expr)
				continue
			}
			out = append(out, promExpr{Where: where, Expr: expr})
		}
	}
	return out
}

// allPanels returns the panels of a dashboard, including those inside
// collapsed rows.
func allPanels(dash any) []any {
	var out []any
	for _, p := range getList(dash, "panels") {
		out = append(out, p)
		out = append(out, getList(p, "panels")...)
	}
	return out
}

// parseExpr parses one expression and reports a parse error.
func parseExpr(t reporter, e promExpr) (parser.Expr, bool) {
	t.Helper()
	if strings.TrimSpace(e.Expr) == "" {
		t.Errorf("%s: empty expression", e.Where)
		return nil, false
	}
	ex, err := promqlParser.ParseExpr(e.Expr)
	if err != nil {
		t.Errorf("%s: PromQL does not parse: %v\n%s", e.Where, err, e.Expr)
		return nil, false
	}
	return ex, true
}

// TestPromQLParses parses every expression of the alert rules and the
// dashboard with Prometheus's own parser.
func TestPromQLParses(t *testing.T) {
	exprs := append(alertExprs(t), dashboardExprs(t)...)
	for _, e := range exprs {
		parseExpr(t, e)
	}
	if len(exprs) < 15 {
		t.Errorf("only %d expressions; are the rules or panels missing?", len(exprs))
	}
	// The check can fail.
	mustFail(t, "unbalanced parenthesis", "does not parse", func(r reporter) {
		parseExpr(r, promExpr{Where: "x", Expr: `sum(rate(jetmail_results_total[5m])`})
	})
	mustFail(t, "dashboard variable", "variable", func(r reporter) {
		dashboardExprsOf(r, map[string]any{"panels": []any{map[string]any{"title": "p", "targets": []any{map[string]any{"refId": "A", "expr": "rate(x[$window])"}}}}})
	})
}

// Severities an alert may have.
var severities = map[string]bool{"critical": true, "warning": true, "info": true}

// TestAlertRules checks the structure of alerts.yml as Prometheus would load
// it, and what the brief asks of every alert: a severity label, summary and
// description annotations that are valid templates and use only labels the
// expression keeps.
func TestAlertRules(t *testing.T) {
	doc := loadYAMLDoc(t, alertsFile)
	checkAlertRules(t, doc)

	// Which alerts there are: the conditions the issue names.
	have := map[string]string{}
	for _, e := range alertExprs(t) {
		have[strings.TrimPrefix(e.Where, "alerts.yml ")] = e.Expr
	}
	for _, want := range []struct{ alert, uses string }{
		{"JetmailWorkerDown", `up{job="jetmail"}`},
		{"JetmailNotConsuming", "jetmail_queue_pending"},
		{"JetmailBacklogHigh", "jetmail_queue_pending"},
		{"JetmailUrgentBacklog", `jetmail_queue_pending{lane="urgent"}`},
		{"JetmailBacklogGrowing", "jetmail_queue_pending"},
		{"JetmailHighFailureRatio", `state="failed"`},
		{"JetmailHighDeferralRatio", `state="deferred"`},
		{"JetmailDeliveryLatencyHigh", "jetmail_delivery_latency_seconds_bucket"},
		{"JetmailNoSMTPConnections", "jetmail_smtp_connections"},
		{"JetmailWebhookDropping", `outcome="dropped"`},
		{"JetmailWebhookBacklog", "jetmail_webhook_pending"},
	} {
		if expr, ok := have[want.alert]; !ok {
			t.Errorf("alerts.yml has no alert %s", want.alert)
		} else if !strings.Contains(expr, want.uses) {
			t.Errorf("alerts.yml %s does not use %s: %s", want.alert, want.uses, expr)
		}
	}

	// The checks can fail.
	bad := func(mut func(rule map[string]any)) any {
		rule := map[string]any{
			"alert": "X", "expr": "sum by (connection) (jetmail_smtp_connections) == 0", "for": "5m",
			"labels":      map[string]any{"severity": "warning"},
			"annotations": map[string]any{"summary": "s {{ $labels.connection }}", "description": "d {{ $value | humanize }}"},
		}
		mut(rule)
		return map[string]any{"groups": []any{map[string]any{"name": "g", "rules": []any{rule}}}}
	}
	mustFail(t, "no severity", "severity", func(r reporter) {
		checkAlertRules(r, bad(func(m map[string]any) { delete(m["labels"].(map[string]any), "severity") }))
	})
	mustFail(t, "no description", "description", func(r reporter) {
		checkAlertRules(r, bad(func(m map[string]any) { delete(m["annotations"].(map[string]any), "description") }))
	})
	mustFail(t, "bad for", "for", func(r reporter) {
		checkAlertRules(r, bad(func(m map[string]any) { m["for"] = "ten minutes" }))
	})
	mustFail(t, "bad template", "template", func(r reporter) {
		checkAlertRules(r, bad(func(m map[string]any) { m["annotations"].(map[string]any)["summary"] = "{{ $value" }))
	})
	mustFail(t, "label aggregated away", "$labels.instance", func(r reporter) {
		checkAlertRules(r, bad(func(m map[string]any) { m["annotations"].(map[string]any)["summary"] = "{{ $labels.instance }}" }))
	})
	r := &recorder{}
	checkAlertRules(r, bad(func(map[string]any) {}))
	if len(r.errs) > 0 {
		t.Errorf("a good rule failed the check: %v", r.errs)
	}
}

var alertName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// labelRef matches $labels.NAME in a template.
var labelRef = regexp.MustCompile(`\$labels\.([A-Za-z_][A-Za-z0-9_]*)`)

func checkAlertRules(t reporter, doc any) {
	t.Helper()
	groups := getList(doc, "groups")
	if len(groups) == 0 {
		t.Errorf("alerts: no groups")
	}
	groupNames := map[string]bool{}
	alertNames := map[string]bool{}
	for gi, g := range groups {
		gname := getString(g, "name")
		if gname == "" || groupNames[gname] {
			t.Errorf("alerts: group %d: name %q is empty or not unique", gi, gname)
		}
		groupNames[gname] = true
		for k := range getMap(g) {
			switch k {
			case "name", "rules", "interval", "limit", "labels", "query_offset":
			default:
				t.Errorf("alerts: group %q: unknown key %q", gname, k)
			}
		}
		for ri, r := range getList(g, "rules") {
			name := getString(r, "alert")
			where := fmt.Sprintf("alerts: group %q rule %d (%s)", gname, ri, name)
			for k := range getMap(r) {
				switch k {
				case "alert", "expr", "for", "keep_firing_for", "labels", "annotations":
				default:
					t.Errorf("%s: unknown key %q", where, k)
				}
			}
			if !alertName.MatchString(name) {
				t.Errorf("%s: not an alert, or a bad alert name (recording rules are not expected here)", where)
			} else if alertNames[name] {
				t.Errorf("%s: alert name used twice", where)
			}
			alertNames[name] = true
			expr, ok := parseExpr(t, promExpr{Where: where, Expr: getString(r, "expr")})
			for _, k := range []string{"for", "keep_firing_for"} {
				if v := getString(r, k); v != "" {
					if _, err := model.ParseDuration(v); err != nil {
						t.Errorf("%s: %s %q: %v", where, k, v, err)
					}
				}
			}
			if sev := getString(r, "labels", "severity"); !severities[sev] {
				t.Errorf("%s: labels.severity %q is not one of critical, warning, info", where, sev)
			}
			var kept map[string]bool
			if ok {
				kept = keptLabels(expr)
			}
			for _, a := range []string{"summary", "description"} {
				text := getString(r, "annotations", a)
				if strings.TrimSpace(text) == "" {
					t.Errorf("%s: no %s annotation", where, a)
					continue
				}
				if err := checkTemplate(text); err != nil {
					t.Errorf("%s: %s annotation is not a valid template: %v", where, a, err)
				}
				for _, m := range labelRef.FindAllStringSubmatch(text, -1) {
					if kept != nil && !kept[m[1]] {
						t.Errorf("%s: %s annotation uses $labels.%s, which the expression aggregates away (it keeps %v)", where, a, m[1], sortedKeys(kept))
					}
				}
			}
		}
	}
	if len(alertNames) == 0 {
		t.Errorf("alerts: no alert rules")
	}
}

// keptLabels returns the labels that survive into the result of expr when
// its outermost vector operations are aggregations with by (…), or nil when
// that cannot be told simply (then $labels references are not checked).
func keptLabels(expr parser.Expr) map[string]bool {
	switch e := expr.(type) {
	case *parser.ParenExpr:
		return keptLabels(e.Expr)
	case *parser.AggregateExpr:
		if e.Without {
			return nil
		}
		kept := map[string]bool{}
		for _, l := range e.Grouping {
			kept[l] = true
		}
		return kept
	case *parser.BinaryExpr:
		// The result has the labels of the left side (for comparisons and
		// and/unless with a vector on the left).
		if l := keptLabels(e.LHS); l != nil {
			return l
		}
		if e.LHS.Type() == parser.ValueTypeScalar {
			return keptLabels(e.RHS)
		}
		return nil
	case *parser.Call:
		switch e.Func.Name {
		case "histogram_quantile":
			kept := keptLabels(e.Args[1])
			if kept != nil {
				delete(kept, "le")
			}
			return kept
		case "absent":
			return map[string]bool{}
		}
	case *parser.NumberLiteral:
		return map[string]bool{}
	}
	return nil
}

// checkTemplate parses and executes an annotation as Prometheus does, with
// its variables and stand-ins for its functions.
func checkTemplate(text string) error {
	const defs = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}"
	str := func(any) string { return "x" }
	funcs := template.FuncMap{
		"humanize": str, "humanize1024": str, "humanizePercentage": str, "humanizeDuration": str,
		"humanizeTimestamp": str, "toTime": str, "title": str,
		"toUpper": strings.ToUpper, "toLower": strings.ToLower, "match": func(string, string) bool { return true },
		"reReplaceAll": func(string, string, string) string { return "" }, "graphLink": str, "tableLink": str,
		"stripPort": str, "stripDomain": str, "pathPrefix": func() string { return "" }, "externalURL": func() string { return "" },
		"safeHtml": str, "parseDuration": func(string) float64 { return 0 },
	}
	tm, err := template.New("annotation").Option("missingkey=zero").Funcs(funcs).Parse(defs + text)
	if err != nil {
		return err
	}
	data := map[string]any{
		"Labels": map[string]string{}, "ExternalLabels": map[string]string{}, "ExternalURL": "", "Value": 1.0,
	}
	return tm.Execute(&strings.Builder{}, data)
}

// selectorUse is one vector selector of an expression: a metric name and its
// label matchers.
type selectorUse struct {
	Where    string
	Name     string
	Matchers []*labels.Matcher // without __name__
}

// selectors returns the vector selectors of expr.
func selectors(where string, expr parser.Expr) []selectorUse {
	var out []selectorUse
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		u := selectorUse{Where: where, Name: vs.Name}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				if u.Name == "" && m.Type == labels.MatchEqual {
					u.Name = m.Value
				}
				continue
			}
			u.Matchers = append(u.Matchers, m)
		}
		out = append(out, u)
		return nil
	})
	return out
}

// exported describes the series a running worker exports: for each name
// (histograms expanded to _bucket, _sum and _count), the label names and
// the values seen.
type exported map[string]map[string]map[string]bool

// contractLabelValues are the label values of CONTRACT §3 and §6, which may
// not all show up in one short run of a worker.
var contractLabelValues = map[string]map[string][]string{
	"jetmail_results_total":       {"state": {"accepted", "deferred", "sent", "failed"}, "status": {"200", "202", "400", "401", "403", "404", "500"}},
	"jetmail_requests_total":      {"outcome": {"accepted", "invalid", "duplicate"}},
	"jetmail_smtp_attempts_total": {"outcome": {"ok", "transient", "permanent"}},
}

// labelsAddedByPrometheus are the target labels every scraped series gets.
var labelsAddedByPrometheus = map[string]bool{"job": true, "instance": true}

// checkSelectors checks that every selector names a metric the worker
// exports (or up, Prometheus's own) with label names it has and, for = and
// simple =~ alternations, values it can have. jobs are the scrape job names
// of prometheus.yml.
func checkSelectors(t reporter, uses []selectorUse, exp exported, jobs map[string]bool) {
	t.Helper()
	for _, u := range uses {
		if u.Name == "" {
			t.Errorf("%s: a selector without a metric name: %v", u.Where, u.Matchers)
			continue
		}
		if u.Name == "up" {
			for _, m := range u.Matchers {
				if m.Name == "job" && m.Type == labels.MatchEqual && !jobs[m.Value] {
					t.Errorf("%s: up{job=%q}: prometheus.yml has no scrape job of that name (it has %v)", u.Where, m.Value, sortedKeys(jobs))
				}
			}
			continue
		}
		lbls, ok := exp[u.Name]
		if !ok {
			t.Errorf("%s: metric %s is not exported by the worker (it exports %v)", u.Where, u.Name, sortedKeys(exp))
			continue
		}
		family := baseName(u.Name, exp)
		for _, m := range u.Matchers {
			if labelsAddedByPrometheus[m.Name] {
				continue
			}
			values, ok := lbls[m.Name]
			if !ok {
				t.Errorf("%s: metric %s has no label %q (it has %v)", u.Where, u.Name, m.Name, sortedKeys(lbls))
				continue
			}
			allowed := map[string]bool{}
			for v := range values {
				allowed[v] = true
			}
			for _, v := range contractLabelValues[family][m.Name] {
				allowed[v] = true
			}
			for _, v := range literalValues(m) {
				if !allowed[v] {
					t.Errorf("%s: %s{%s}: %q is not a value the worker gives label %s (known: %v)", u.Where, u.Name, m, v, m.Name, sortedKeys(allowed))
				}
			}
		}
	}
}

// baseName maps a histogram's _bucket/_sum/_count series to the family.
func baseName(name string, exp exported) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, suf); ok {
			if _, isFamily := exp[b+"_bucket"]; isFamily {
				return b
			}
		}
	}
	return name
}

// literalValues returns the values a matcher asks for when they are plain
// literals: the value of =, the alternatives of a =~ like "sent|failed".
// Negative and other regular-expression matchers give none.
var plainAlternation = regexp.MustCompile(`^[A-Za-z0-9_.:-]+(\|[A-Za-z0-9_.:-]+)*$`)

func literalValues(m *labels.Matcher) []string {
	switch m.Type {
	case labels.MatchEqual:
		return []string{m.Value}
	case labels.MatchRegexp:
		if plainAlternation.MatchString(m.Value) {
			return strings.Split(m.Value, "|")
		}
	}
	return nil
}

// prometheusJobs returns the scrape job names of prometheus.yml.
func prometheusJobs(t testing.TB) map[string]bool {
	jobs := map[string]bool{}
	for _, sc := range getList(loadYAMLDoc(t, prometheusFile), "scrape_configs") {
		jobs[getString(sc, "job_name")] = true
	}
	return jobs
}

// TestSelectorCheckCatches makes sure the metric check can fail, on a small
// made-up export.
func TestSelectorCheckCatches(t *testing.T) {
	exp := exported{
		"jetmail_results_total":                   {"state": {"sent": true}, "status": {"200": true}},
		"jetmail_delivery_latency_seconds_bucket": {"le": {"+Inf": true}},
		"jetmail_delivery_latency_seconds_sum":    {},
		"jetmail_delivery_latency_seconds_count":  {},
	}
	jobs := map[string]bool{"jetmail": true}
	run := func(expr string) func(r reporter) {
		return func(r reporter) {
			e, err := promqlParser.ParseExpr(expr)
			if err != nil {
				t.Fatal(err)
			}
			checkSelectors(r, selectors("test", e), exp, jobs)
		}
	}
	mustFail(t, "misspelt metric", "jetmail_result_total is not exported", run(`rate(jetmail_result_total[5m])`))
	mustFail(t, "histogram without _bucket", "jetmail_delivery_latency_seconds is not exported", run(`jetmail_delivery_latency_seconds`))
	mustFail(t, "unknown label", `no label "code"`, run(`jetmail_results_total{code="200"}`))
	mustFail(t, "unknown value", `"fail" is not a value`, run(`jetmail_results_total{state=~"sent|fail"}`))
	mustFail(t, "unknown job", "no scrape job", run(`up{job="mailer"}`))
	r := &recorder{}
	run(`sum(rate(jetmail_results_total{state=~"sent|failed",job="jetmail"}[5m])) / sum(rate(jetmail_delivery_latency_seconds_count[5m])) and up{job="jetmail"}`)(r)
	if len(r.errs) > 0 {
		t.Errorf("good expression failed the check: %v", r.errs)
	}
}
