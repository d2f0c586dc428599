package deploy

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// compose is docker-compose.yml.
type compose struct{ doc any }

func loadCompose(t testing.TB) compose { return compose{loadYAMLDoc(t, composeFile)} }

func (c compose) service(t testing.TB, name string) map[string]any {
	t.Helper()
	s := getMap(c.doc, "services", name)
	if s == nil {
		t.Fatalf("%s: no service %q", composeFile, name)
	}
	return s
}

// serviceEnv returns a service's environment, written as a map or as a
// list of KEY=VALUE.
func serviceEnv(svc any) map[string]string {
	env := map[string]string{}
	switch e := get(svc, "environment").(type) {
	case map[string]any:
		for k, v := range e {
			if v == nil {
				env[k] = ""
			} else {
				env[k] = getString(e, k)
			}
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			env[k] = v
		}
	}
	return env
}

// A portMapping is one entry of a service's ports.
type portMapping struct{ Host, Container int }

func servicePorts(t testing.TB, svc any) []portMapping {
	t.Helper()
	var out []portMapping
	for _, p := range getList(svc, "ports") {
		if m, ok := p.(map[string]any); ok { // long syntax
			h, _ := strconv.Atoi(getString(m, "published"))
			c, _ := strconv.Atoi(getString(m, "target"))
			out = append(out, portMapping{h, c})
			continue
		}
		s, _, _ := strings.Cut(fmt.Sprint(p), "/") // "8080:8080/tcp"
		parts := strings.Split(s, ":")
		c, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil {
			t.Errorf("%s: port %q: %v", composeFile, p, err)
			continue
		}
		h := 0
		if len(parts) >= 2 {
			h, _ = strconv.Atoi(parts[len(parts)-2])
		}
		out = append(out, portMapping{h, c})
	}
	return out
}

// publishes reports whether svc publishes container port c on host port h.
func publishes(t testing.TB, svc any, h, c int) bool {
	for _, p := range servicePorts(t, svc) {
		if p.Host == h && p.Container == c {
			return true
		}
	}
	return false
}

// A mount is one entry of a service's volumes.
type mount struct {
	Source, Target string
	Bind           bool // a host path (else a named volume)
}

func serviceMounts(svc any) []mount {
	var out []mount
	for _, v := range getList(svc, "volumes") {
		var m mount
		if lm, ok := v.(map[string]any); ok {
			m = mount{Source: getString(lm, "source"), Target: getString(lm, "target"), Bind: getString(lm, "type") == "bind"}
		} else {
			parts := strings.Split(fmt.Sprint(v), ":")
			m.Source = parts[0]
			if len(parts) > 1 {
				m.Target = parts[1]
			}
			m.Bind = strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, "~")
		}
		out = append(out, m)
	}
	return out
}

// hostPath maps a path inside a service's container to the repository
// path of the bind mount that provides it ("" if none does).
func hostPath(svc any, containerPath string) string {
	best := mount{}
	for _, m := range serviceMounts(svc) {
		if !m.Bind {
			continue
		}
		if (containerPath == m.Target || strings.HasPrefix(containerPath, strings.TrimSuffix(m.Target, "/")+"/")) && len(m.Target) > len(best.Target) {
			best = m
		}
	}
	if best.Target == "" {
		return ""
	}
	rest := strings.TrimPrefix(containerPath, best.Target)
	return path.Clean(path.Join(best.Source, rest))
}

// dependsOn lists a service's depends_on, written as a list or a map.
func dependsOn(svc any) map[string]string {
	out := map[string]string{}
	switch d := get(svc, "depends_on").(type) {
	case []any:
		for _, s := range d {
			out[fmt.Sprint(s)] = "service_started"
		}
	case map[string]any:
		for s := range d {
			out[s] = getString(d, s, "condition")
		}
	}
	return out
}

func TestCompose(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"nats", "jetmail", "mailpit", "prometheus", "grafana"} {
		c.service(t, name)
	}
	services := getMap(c.doc, "services")

	// Every bind mount's source exists; every named volume is declared.
	for _, name := range sortedKeys(services) {
		for _, m := range serviceMounts(services[name]) {
			if m.Bind {
				if _, err := os.Stat(rootPath(m.Source)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, m.Source, err)
				}
			} else if _, ok := getMap(c.doc, "volumes")[m.Source]; !ok {
				t.Errorf("service %s uses volume %s, which is not declared under volumes:", name, m.Source)
			}
		}
		for dep := range dependsOn(services[name]) {
			if _, ok := services[dep]; !ok {
				t.Errorf("service %s depends on %s, which is not a service", name, dep)
			}
		}
	}

	// The worker: built from deploy/Dockerfile, configured by flags'
	// variables, reachable on its HTTP port, no healthcheck (distroless
	// has no shell), and started after NATS.
	w := c.service(t, "jetmail")
	ctx := getString(w, "build", "context")
	df := getString(w, "build", "dockerfile")
	if path.Clean(path.Join(ctx, df)) != dockerfile {
		t.Errorf("service jetmail builds %s in context %q, want %s with the repository root as context", df, ctx, dockerfile)
	}
	env := serviceEnv(w)
	checkWorkerEnv(t, "compose service jetmail", env)
	for k, want := range map[string]string{
		"JETMAIL_NATS_URL":  "nats://nats:4222",
		"JETMAIL_SMTP_URL":  "smtp://mailpit:1025?tls=none",
		"JETMAIL_HTTP_ADDR": ":8080",
	} {
		if env[k] != want {
			t.Errorf("compose service jetmail: %s=%q, want %q", k, env[k], want)
		}
	}
	if env["JETMAIL_SMTP_FROM"] == "" {
		t.Errorf("compose service jetmail: no JETMAIL_SMTP_FROM, so `jetmail send` without --from fails")
	}
	if dir, tmpfs := env["JETMAIL_INDEX_DIR"], stringList(get(w, "tmpfs")); getString(w, "read_only") == "true" &&
		(dir == "" || !slices.ContainsFunc(tmpfs, func(m string) bool { return strings.HasPrefix(dir+"/", strings.SplitN(m, ":", 2)[0]+"/") })) {
		t.Errorf("compose service jetmail: read-only, and JETMAIL_INDEX_DIR %q is not on its tmpfs %v", dir, tmpfs)
	}
	httpPort := portOfAddr(t, env["JETMAIL_HTTP_ADDR"])
	if !publishes(t, w, httpPort, httpPort) {
		t.Errorf("compose service jetmail does not publish its HTTP port %d as %d", httpPort, httpPort)
	}
	if get(w, "healthcheck") != nil {
		t.Errorf("compose service jetmail has a healthcheck; the distroless image has no shell or HTTP client to run one")
	}
	if _, ok := dependsOn(w)["nats"]; !ok {
		t.Errorf("compose service jetmail does not depend on nats")
	}
	grace := 30 * time.Second // the flag's default
	if g, ok := env["JETMAIL_GRACE_PERIOD"]; ok {
		grace, _ = time.ParseDuration(g)
	}
	stop := 10 * time.Second // Docker's default
	if s := getString(w, "stop_grace_period"); s != "" {
		var err error
		if stop, err = time.ParseDuration(s); err != nil {
			t.Errorf("compose service jetmail: stop_grace_period %q: %v", s, err)
		}
	}
	if stop <= grace {
		t.Errorf("compose service jetmail: stop_grace_period %s is not longer than the worker's grace period %s; Docker would kill it mid-delivery", stop, grace)
	}

	// NATS: JetStream on, stored in a volume, client and monitoring ports
	// published (the README's `send --nats-url nats://localhost:4222`).
	n := c.service(t, "nats")
	cmd := stringList(get(n, "command"))
	joined := " " + strings.Join(cmd, " ") + " "
	if !strings.Contains(joined, " -js ") && !strings.Contains(joined, " --jetstream ") {
		t.Errorf("compose service nats: command %v does not enable JetStream", cmd)
	}
	storeDir := ""
	for i, a := range cmd {
		if (a == "-sd" || a == "--store_dir") && i+1 < len(cmd) {
			storeDir = cmd[i+1]
		}
	}
	onVolume := false
	for _, m := range serviceMounts(n) {
		onVolume = onVolume || (storeDir != "" && m.Target == storeDir)
	}
	if !onVolume {
		t.Errorf("compose service nats: the JetStream store (-sd %q) is not a mounted volume", storeDir)
	}
	natsURL, err := url.Parse(env["JETMAIL_NATS_URL"])
	if err == nil {
		if _, ok := services[natsURL.Hostname()]; !ok {
			t.Errorf("JETMAIL_NATS_URL host %s is not a compose service", natsURL.Hostname())
		}
	}
	for _, p := range []int{4222, 8222} {
		if !publishes(t, n, p, p) {
			t.Errorf("compose service nats does not publish port %d", p)
		}
	}

	// Mailpit: the SMTP server of JETMAIL_SMTP_URL, web UI on 8025.
	mp := c.service(t, "mailpit")
	if img := getString(mp, "image"); !strings.HasPrefix(img, "axllent/mailpit") {
		t.Errorf("compose service mailpit: image %q", img)
	}
	if !publishes(t, mp, 8025, 8025) {
		t.Errorf("compose service mailpit does not publish its web UI on 8025")
	}
	if smtpURL, err := url.Parse(env["JETMAIL_SMTP_URL"]); err != nil || smtpURL.Hostname() != "mailpit" || smtpURL.Port() != "1025" {
		t.Errorf("JETMAIL_SMTP_URL %q is not Mailpit's SMTP port (mailpit:1025)", env["JETMAIL_SMTP_URL"])
	}

	checkComposePrometheus(t, c, httpPort)
	checkComposeGrafana(t, c)
}

// checkComposePrometheus: the mounted prometheus.yml scrapes the worker
// service on its HTTP port and loads alerts.yml.
func checkComposePrometheus(t *testing.T, c compose, httpPort int) {
	p := c.service(t, "prometheus")
	configFile := "/etc/prometheus/prometheus.yml"
	for _, a := range stringList(get(p, "command")) {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configFile = v
		}
	}
	if hp := hostPath(p, configFile); hp != prometheusFile {
		t.Errorf("compose service prometheus reads %s, which is %q on the host, want %s", configFile, hp, prometheusFile)
	}
	cfg := loadYAMLDoc(t, prometheusFile)
	var targets []string
	for _, sc := range getList(cfg, "scrape_configs") {
		if getString(sc, "job_name") == "jetmail" {
			for _, stc := range getList(sc, "static_configs") {
				targets = append(targets, stringList(get(stc, "targets"))...)
			}
		}
	}
	if len(targets) == 0 {
		t.Errorf("%s: no static targets for job jetmail", prometheusFile)
	}
	for _, tg := range targets {
		host, port, _ := strings.Cut(tg, ":")
		if getMap(c.doc, "services", host) == nil {
			t.Errorf("%s: target %s: %s is not a compose service", prometheusFile, tg, host)
		}
		if port != strconv.Itoa(httpPort) {
			t.Errorf("%s: target %s: the worker listens on %d", prometheusFile, tg, httpPort)
		}
	}
	rules := stringList(get(cfg, "rule_files"))
	found := false
	for _, r := range rules {
		rel := path.Join(path.Dir(prometheusFile), r)
		if _, err := os.Stat(rootPath(rel)); err != nil {
			t.Errorf("%s: rule file %s: %v", prometheusFile, r, err)
		}
		found = found || rel == alertsFile
	}
	if !found {
		t.Errorf("%s: rule_files %v do not load %s", prometheusFile, rules, alertsFile)
	}
}

// checkComposeGrafana: the provisioning is mounted, the datasource points at
// the Prometheus service, and the dashboards provider's folder is the
// mounted deploy/grafana/dashboards.
func checkComposeGrafana(t *testing.T, c compose) {
	g := c.service(t, "grafana")
	if hp := hostPath(g, "/etc/grafana/provisioning/datasources"); hp != grafanaDatasources {
		t.Errorf("compose service grafana: /etc/grafana/provisioning/datasources is %q on the host, want %s", hp, grafanaDatasources)
	}
	if hp := hostPath(g, "/etc/grafana/provisioning/dashboards"); hp != grafanaDashboards {
		t.Errorf("compose service grafana: /etc/grafana/provisioning/dashboards is %q on the host, want %s", hp, grafanaDashboards)
	}
	for _, ds := range grafanaDatasourceList(t) {
		u, err := url.Parse(getString(ds, "url"))
		if err != nil || getMap(c.doc, "services", u.Hostname()) == nil {
			t.Errorf("Grafana datasource %s: url %q is not a compose service", getString(ds, "name"), getString(ds, "url"))
		}
	}
	dashDir := path.Dir(dashboardFile)
	providers := 0
	for _, f := range yamlFilesIn(t, grafanaDashboards) {
		for _, p := range getList(loadYAMLDoc(t, f), "providers") {
			providers++
			dir := getString(p, "options", "path")
			if hp := hostPath(g, dir); hp != dashDir {
				t.Errorf("%s: provider %s loads %s, which is %q on the host, want %s", f, getString(p, "name"), dir, hp, dashDir)
			}
		}
	}
	if providers == 0 {
		t.Errorf("%s: no dashboard providers", grafanaDashboards)
	}
	if home := serviceEnv(g)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		if hp := hostPath(g, home); hp != dashboardFile {
			t.Errorf("compose service grafana: home dashboard %s is %q on the host, want %s", home, hp, dashboardFile)
		}
	}
}

func yamlFilesIn(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(rootPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); ext == ".yml" || ext == ".yaml" {
			out = append(out, dir+"/"+e.Name())
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no YAML files", dir)
	}
	return out
}

func grafanaDatasourceList(t testing.TB) []any {
	var out []any
	for _, f := range yamlFilesIn(t, grafanaDatasources) {
		out = append(out, getList(loadYAMLDoc(t, f), "datasources")...)
	}
	return out
}

// TestGrafanaDashboard checks the dashboard: Prometheus datasource by the
// provisioned uid, clear unique titles, sane layout, the panels the issue
// asks for. (That its queries parse and use exported metrics is checked by
// TestPromQLParses and TestAgainstRunningWorker.)
func TestGrafanaDashboard(t *testing.T) {
	dash := loadJSON(t, dashboardFile)
	uids := map[string]string{} // uid → type
	for _, ds := range grafanaDatasourceList(t) {
		uid := getString(ds, "uid")
		if uid == "" {
			t.Errorf("Grafana datasource %s has no uid; the dashboard refers to datasources by uid", getString(ds, "name"))
		}
		uids[uid] = getString(ds, "type")
	}
	checkDashboard(t, dash, uids)

	titles := map[string]bool{}
	for _, p := range allPanels(dash) {
		titles[strings.ToLower(getString(p, "title"))] = true
	}
	for _, want := range []string{"throughput", "latency", "smtp send", "results by", "queue depth", "retries", "smtp connections", "in-flight",
		"by lane", "urgent", "scheduled", "cancelled"} {
		ok := false
		for title := range titles {
			ok = ok || strings.Contains(title, want)
		}
		if !ok {
			t.Errorf("the dashboard has no panel whose title mentions %q", want)
		}
	}

	mustFail(t, "unknown datasource", "datasource", func(r reporter) {
		checkDashboard(r, map[string]any{"uid": "x", "title": "x", "schemaVersion": 39, "panels": []any{map[string]any{
			"id": 1, "type": "timeseries", "title": "t", "datasource": map[string]any{"type": "prometheus", "uid": "nope"},
			"gridPos": map[string]any{"x": 0, "y": 0, "w": 12, "h": 8}, "targets": []any{map[string]any{"refId": "A", "expr": "up"}},
		}}}, uids)
	})
	mustFail(t, "overlapping panels", "overlap", func(r reporter) {
		p := func(id int) any {
			return map[string]any{"id": id, "type": "timeseries", "title": fmt.Sprint("t", id), "datasource": map[string]any{"type": "prometheus", "uid": "prometheus"},
				"gridPos": map[string]any{"x": 0, "y": 0, "w": 12, "h": 8}, "targets": []any{map[string]any{"refId": "A", "expr": "up"}}}
		}
		checkDashboard(r, map[string]any{"uid": "x", "title": "x", "schemaVersion": 39, "panels": []any{p(1), p(2)}}, uids)
	})
}

func checkDashboard(t reporter, dash any, datasourceUIDs map[string]string) {
	t.Helper()
	if getString(dash, "uid") == "" || getString(dash, "title") == "" {
		t.Errorf("dashboard: no uid or title")
	}
	if v, _ := getInt(dash, "schemaVersion"); v < 36 || v > 41 {
		t.Errorf("dashboard: schemaVersion %d, want about 39", v)
	}
	ids := map[int]bool{}
	titles := map[string]bool{}
	type rect struct{ x, y, w, h int }
	var rects []rect
	var rectTitles []string
	for _, p := range allPanels(dash) {
		title := getString(p, "title")
		where := fmt.Sprintf("dashboard panel %q", title)
		id, ok := getInt(p, "id")
		if !ok || ids[id] {
			t.Errorf("%s: id missing or not unique", where)
		}
		ids[id] = true
		if strings.TrimSpace(title) == "" || titles[title] {
			t.Errorf("%s: title empty or not unique", where)
		}
		titles[title] = true
		x, _ := getInt(p, "gridPos", "x")
		y, _ := getInt(p, "gridPos", "y")
		w, _ := getInt(p, "gridPos", "w")
		h, _ := getInt(p, "gridPos", "h")
		if w <= 0 || h <= 0 || x < 0 || y < 0 || x+w > 24 {
			t.Errorf("%s: gridPos x=%d y=%d w=%d h=%d is outside the 24-column grid", where, x, y, w, h)
		}
		for i, r := range rects {
			if x < r.x+r.w && r.x < x+w && y < r.y+r.h && r.y < y+h {
				t.Errorf("%s: overlaps panel %q", where, rectTitles[i])
			}
		}
		rects = append(rects, rect{x, y, w, h})
		rectTitles = append(rectTitles, title)
		if getString(p, "type") == "row" {
			continue
		}
		dsOK := func(ds any) bool {
			typ, ok := datasourceUIDs[getString(ds, "uid")]
			return ok && typ == getString(ds, "type") && typ == "prometheus"
		}
		if !dsOK(get(p, "datasource")) {
			t.Errorf("%s: datasource %v is not the provisioned Prometheus datasource (by uid)", where, get(p, "datasource"))
		}
		targets := getList(p, "targets")
		if len(targets) == 0 {
			t.Errorf("%s: no queries", where)
		}
		refs := map[string]bool{}
		for _, tg := range targets {
			ref := getString(tg, "refId")
			if ref == "" || refs[ref] {
				t.Errorf("%s: refId %q empty or not unique", where, ref)
			}
			refs[ref] = true
			if ds := get(tg, "datasource"); ds != nil && !dsOK(ds) {
				t.Errorf("%s target %s: datasource %v is not the provisioned Prometheus datasource", where, ref, ds)
			}
		}
	}
}
