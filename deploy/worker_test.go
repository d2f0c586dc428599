package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/webhook"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// runningWorker is a real worker on a real in-process JetStream server that
// delivers to an in-process SMTP server (as the compose file's worker does
// to Mailpit), serving its HTTP handler.
type runningWorker struct {
	http *httptest.Server
}

// startWorker starts the worker, sends one message that is delivered and
// one invalid request (so that the result counters have sent and failed
// series), and waits for both final results.
func startWorker(t *testing.T) *runningWorker {
	t.Helper()
	nc, js := jstest.Start(t).Connect(t)
	smtpSrv := smtptest.NewServer(t)

	reg := prometheus.NewRegistry()
	cfg := worker.Config{
		Outbox:      t.TempDir(),
		Connections: map[string]config.SMTP{"default": {URL: smtpSrv.URL()}},
		GracePeriod: 5 * time.Second,
	}
	w, err := worker.New(cfg, js, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	jstest.Serve(t, w.Run, nil)
	// A webhook beside it, as `jetmail worker --webhook` runs one, so that
	// the webhook metrics are exported too.
	receiver := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(receiver.Close)
	hooks, err := webhook.New(js, schema.DefaultNames(), []webhook.Config{{Name: "crm", URL: receiver.URL,
		Secret: []byte("0123456789abcdef0123456789abcdef")}}, reg, nil, webhook.Options{})
	if err != nil {
		t.Fatal(err)
	}
	jstest.Serve(t, hooks.Run, nil)
	rw := &runningWorker{http: httptest.NewServer(w.Handler())}
	t.Cleanup(rw.http.Close)

	waitUntil(t, 15*time.Second, "the worker is ready (/readyz)", func() bool {
		code, _ := rw.get(t, "/readyz")
		return code == http.StatusOK
	})

	results, err := nc.SubscribeSync("mail.result.>")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = results.Unsubscribe() })
	want := map[string]string{"deploy-sent": "sent", "deploy-invalid": "failed"}
	for id, body := range map[string]string{
		"deploy-sent":    `{"Id":"deploy-sent","To":"a@example.com","From":"b@example.com","Subject":"x","Body":"y"}`,
		"deploy-invalid": `{"Id":"deploy-invalid","From":"b@example.com","Subject":"no recipient"}`,
	} {
		jstest.Publish(t, js, "", []byte(body), id)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(want) > 0 {
		m, err := results.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("waiting for the results of %v: %v", sortedKeys(want), err)
		}
		var ev struct{ Id, State, Error string }
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("result %s: %v", m.Data, err)
		}
		if ev.State == "accepted" || ev.State == "deferred" {
			continue
		}
		if ev.State != want[ev.Id] {
			t.Fatalf("message %s ended %s, want %s: %s", ev.Id, ev.State, want[ev.Id], m.Data)
		}
		delete(want, ev.Id)
	}
	// Counters are updated around the result publication: wait until the
	// scrape shows both final results.
	waitUntil(t, 10*time.Second, "the results show in /metrics", func() bool {
		_, body := rw.get(t, "/metrics")
		return strings.Contains(body, `state="sent"`) && strings.Contains(body, `state="failed"`)
	})
	return rw
}

func (rw *runningWorker) get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(rw.http.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads /metrics and returns the series names with their labels and
// label values; a histogram is expanded into name_bucket, name_sum and
// name_count, as Prometheus stores it.
func (rw *runningWorker) scrape(t testing.TB) exported {
	t.Helper()
	code, body := rw.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	exp := exported{}
	add := func(name string, m *dto.Metric, extra string) {
		lbls, ok := exp[name]
		if !ok {
			lbls = map[string]map[string]bool{}
			exp[name] = lbls
		}
		for _, lp := range m.GetLabel() {
			if lbls[lp.GetName()] == nil {
				lbls[lp.GetName()] = map[string]bool{}
			}
			lbls[lp.GetName()][lp.GetValue()] = true
		}
		if extra != "" && lbls[extra] == nil {
			lbls[extra] = map[string]bool{}
		}
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				add(name+"_bucket", m, "le")
				add(name+"_sum", m, "")
				add(name+"_count", m, "")
			case dto.MetricType_SUMMARY:
				add(name, m, "quantile")
				add(name+"_sum", m, "")
				add(name+"_count", m, "")
			default:
				add(name, m, "")
			}
		}
	}
	return exp
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgainstRunningWorker checks the alert rules, the dashboard and the
// Kubernetes probes against what a running worker really serves.
func TestAgainstRunningWorker(t *testing.T) {
	rw := startWorker(t)
	exp := rw.scrape(t)
	jobs := prometheusJobs(t)

	// The metrics of CONTRACT §6 are all there (histograms as _bucket).
	for _, name := range []string{
		"jetmail_requests_total", "jetmail_results_total", "jetmail_smtp_attempts_total",
		"jetmail_smtp_send_seconds_bucket", "jetmail_delivery_latency_seconds_bucket",
		"jetmail_inflight", "jetmail_queue_pending", "jetmail_smtp_connections",
		"jetmail_scheduled", "jetmail_cancelled_total",
	} {
		if _, ok := exp[name]; !ok {
			t.Errorf("the worker does not export %s (CONTRACT §6)", name)
		}
	}
	// Every lane has its queue depth from the start (CONTRACT §6, §7), so
	// that a selector of one lane finds its series on an idle worker.
	for _, lane := range []string{"urgent", "normal", "bulk"} {
		if !exp["jetmail_queue_pending"]["lane"][lane] {
			t.Errorf("the worker does not export jetmail_queue_pending{lane=%q} (it has %v)", lane, exp["jetmail_queue_pending"])
		}
	}

	t.Run("alerts use exported metrics", func(t *testing.T) {
		checkExprs(t, alertExprs(t), exp, jobs)
	})
	t.Run("dashboard uses exported metrics", func(t *testing.T) {
		checkExprs(t, dashboardExprs(t), exp, jobs)
	})
	t.Run("kubernetes probes answer", func(t *testing.T) {
		for _, p := range workerProbePaths(t) {
			if code, body := rw.get(t, p); code != http.StatusOK {
				t.Errorf("the worker answers the Kubernetes probe path %s with %d %s", p, code, body)
			}
		}
	})
	t.Run("scrape path answers", func(t *testing.T) {
		path := getString(loadYAMLDoc(t, prometheusFile), "scrape_configs", 0, "metrics_path")
		if path == "" {
			path = "/metrics"
		}
		if code, _ := rw.get(t, path); code != http.StatusOK {
			t.Errorf("prometheus.yml scrapes %s, which the worker answers with %d", path, code)
		}
	})
}

// checkExprs parses each expression and checks its selectors against the
// export; an expression must use at least one jetmail metric or up.
func checkExprs(t *testing.T, exprs []promExpr, exp exported, jobs map[string]bool) {
	t.Helper()
	for _, e := range exprs {
		ex, ok := parseExpr(t, e)
		if !ok {
			continue
		}
		uses := selectors(e.Where, ex)
		if len(uses) == 0 {
			t.Errorf("%s: selects no metric", e.Where)
		}
		checkSelectors(t, uses, exp, jobs)
	}
	if len(exprs) == 0 {
		t.Error("no expressions")
	}
}

// workerProbePaths returns the HTTP paths of the worker Deployment's probes.
func workerProbePaths(t testing.TB) []string {
	t.Helper()
	k := loadKube(t)
	c := k.workerContainer(t)
	var paths []string
	for _, probe := range []string{"livenessProbe", "readinessProbe", "startupProbe"} {
		if p := getString(c, probe, "httpGet", "path"); p != "" {
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		t.Fatal(fmt.Errorf("the worker container has no HTTP probes"))
	}
	return paths
}
