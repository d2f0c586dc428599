package deploy

import (
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// kube holds the Kubernetes manifests of deploy/kubernetes.
type kube struct {
	files   []string                  // the manifest files (not kustomization.yaml)
	objects map[string]map[string]any // "Kind/name" → object
	kust    any                       // kustomization.yaml
}

func loadKube(t testing.TB) *kube {
	t.Helper()
	entries, err := os.ReadDir(rootPath(kubernetesDir))
	if err != nil {
		t.Fatal(err)
	}
	k := &kube{objects: map[string]map[string]any{}}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || (filepath.Ext(name) != ".yaml" && filepath.Ext(name) != ".yml") {
			continue
		}
		rel := kubernetesDir + "/" + name
		if name == "kustomization.yaml" {
			k.kust = loadYAMLDoc(t, rel)
			continue
		}
		k.files = append(k.files, name)
		for i, doc := range loadYAML(t, rel) {
			obj, ok := doc.(map[string]any)
			kind, objName := getString(doc, "kind"), getString(doc, "metadata", "name")
			if !ok || getString(doc, "apiVersion") == "" || kind == "" || objName == "" {
				t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", rel, i)
			}
			key := kind + "/" + objName
			if _, dup := k.objects[key]; dup {
				t.Fatalf("%s: %s is defined twice", rel, key)
			}
			k.objects[key] = obj
		}
	}
	if k.kust == nil {
		t.Fatalf("%s: no kustomization.yaml", kubernetesDir)
	}
	return k
}

// get returns the object kind/name or fails the test.
func (k *kube) get(t testing.TB, kind, name string) map[string]any {
	t.Helper()
	o, ok := k.objects[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s %q in %s (have %v)", kind, name, kubernetesDir, sortedKeys(k.objects))
	}
	return o
}

// ofKind returns the objects of a kind, by name.
func (k *kube) ofKind(kind string) map[string]map[string]any {
	out := map[string]map[string]any{}
	for key, o := range k.objects {
		if n, ok := strings.CutPrefix(key, kind+"/"); ok {
			out[n] = o
		}
	}
	return out
}

// workerDeployment is the Deployment whose container runs the jetmail
// image's worker command.
func (k *kube) workerDeployment(t testing.TB) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, d := range k.ofKind("Deployment") {
		for _, c := range getList(d, "spec", "template", "spec", "containers") {
			if isJetmailImage(getString(c, "image")) {
				found = append(found, d)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one Deployment running the jetmail image, found %d", len(found))
	}
	return found[0]
}

func isJetmailImage(image string) bool {
	name, _, _ := strings.Cut(image, ":")
	return path.Base(name) == "jetmail"
}

func (k *kube) workerContainer(t testing.TB) map[string]any {
	t.Helper()
	for _, c := range getList(k.workerDeployment(t), "spec", "template", "spec", "containers") {
		if isJetmailImage(getString(c, "image")) {
			return c.(map[string]any)
		}
	}
	panic("unreachable")
}

// containerEnv returns the environment of a container: the data of the
// ConfigMaps of envFrom, then env (literal values; valueFrom as "").
func (k *kube) containerEnv(t testing.TB, c any) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, ef := range getList(c, "envFrom") {
		if name := getString(ef, "configMapRef", "name"); name != "" {
			for key, v := range getMap(k.get(t, "ConfigMap", name), "data") {
				env[getString(ef, "prefix")+key] = fmt.Sprint(v)
			}
		}
		if name := getString(ef, "secretRef", "name"); name != "" {
			t.Errorf("the container takes environment variables from Secret %s; mount secrets as files", name)
		}
	}
	for _, e := range getList(c, "env") {
		env[getString(e, "name")] = getString(e, "value")
	}
	return env
}

// resolvePort turns a probe's or Service's port (a number or a port name)
// into a container port number.
func resolvePort(t testing.TB, c any, port string) int {
	t.Helper()
	if n, err := strconv.Atoi(port); err == nil {
		return n
	}
	for _, p := range getList(c, "ports") {
		if getString(p, "name") == port {
			n, _ := getInt(p, "containerPort")
			return n
		}
	}
	t.Errorf("container %s has no port named %q", getString(c, "name"), port)
	return -1
}

// selects reports whether a selector (matchLabels or a Service selector)
// selects pods with these labels.
func selects(selector, podLabels map[string]any) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if fmt.Sprint(podLabels[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

func TestKustomization(t *testing.T) {
	k := loadKube(t)
	if getString(k.kust, "kind") != "Kustomization" {
		t.Errorf("kustomization.yaml: kind is %q", getString(k.kust, "kind"))
	}
	listed := map[string]bool{}
	for _, r := range stringList(get(k.kust, "resources")) {
		listed[r] = true
		if _, err := os.Stat(rootPath(kubernetesDir + "/" + r)); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
	for _, f := range k.files {
		if !listed[f] {
			t.Errorf("kustomization.yaml does not list %s", f)
		}
	}
	if ns := getString(k.kust, "namespace"); ns != "" {
		for name := range k.ofKind("Namespace") {
			if name != ns {
				t.Errorf("kustomization.yaml puts everything in namespace %s but creates Namespace %s", ns, name)
			}
		}
	}
	for _, img := range getList(k.kust, "images") {
		name := getString(img, "name")
		used := false
		for _, o := range k.objects {
			for _, c := range getList(o, "spec", "template", "spec", "containers") {
				n, _, _ := strings.Cut(getString(c, "image"), ":")
				used = used || n == name
			}
		}
		if !used {
			t.Errorf("kustomization.yaml sets image %s, which no container uses", name)
		}
	}
}

// TestKubernetesPodSecurity checks every pod template against the
// "restricted" Pod Security Standard the namespace enforces, plus a
// read-only root file system and resource requests and limits.
func TestKubernetesPodSecurity(t *testing.T) {
	k := loadKube(t)
	n := 0
	for _, key := range sortedKeys(k.objects) {
		o := k.objects[key]
		pod := getMap(o, "spec", "template", "spec")
		if pod == nil {
			continue
		}
		n++
		checkPodSecurity(t, key, pod)
	}
	if n < 2 {
		t.Errorf("found %d pod templates, want the worker Deployment and the NATS StatefulSet", n)
	}
	mustFail(t, "root container", "runAsNonRoot", func(r reporter) {
		checkPodSecurity(r, "x", map[string]any{"containers": []any{map[string]any{"name": "c"}}})
	})
}

func checkPodSecurity(t reporter, key string, pod map[string]any) {
	t.Helper()
	podSC := getMap(pod, "securityContext")
	for _, c := range getList(pod, "containers") {
		where := fmt.Sprintf("%s container %s", key, getString(c, "name"))
		sc := getMap(c, "securityContext")
		either := func(field string) string {
			if v := getString(sc, field); v != "" {
				return v
			}
			return getString(podSC, field)
		}
		if either("runAsNonRoot") != "true" {
			t.Errorf("%s: runAsNonRoot is not true", where)
		}
		if u := either("runAsUser"); u == "0" {
			t.Errorf("%s: runs as user 0", where)
		}
		if getString(sc, "allowPrivilegeEscalation") != "false" {
			t.Errorf("%s: allowPrivilegeEscalation is not false", where)
		}
		if getString(sc, "readOnlyRootFilesystem") != "true" {
			t.Errorf("%s: readOnlyRootFilesystem is not true", where)
		}
		if drop := stringList(get(sc, "capabilities", "drop")); len(drop) != 1 || drop[0] != "ALL" {
			t.Errorf("%s: capabilities.drop is %v, not [ALL]", where, drop)
		}
		seccomp := getString(sc, "seccompProfile", "type")
		if seccomp == "" {
			seccomp = getString(podSC, "seccompProfile", "type")
		}
		if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
			t.Errorf("%s: seccompProfile.type is %q", where, seccomp)
		}
		for _, kind := range []string{"requests", "limits"} {
			for _, res := range []string{"cpu", "memory"} {
				if getString(c, "resources", kind, res) == "" {
					t.Errorf("%s: no resources.%s.%s", where, kind, res)
				}
			}
		}
	}
}

// TestKubernetesWorker checks the worker Deployment and what it refers to.
func TestKubernetesWorker(t *testing.T) {
	k := loadKube(t)
	d := k.workerDeployment(t)
	c := k.workerContainer(t)
	pod := getMap(d, "spec", "template")
	podLabels := getMap(pod, "metadata", "labels")
	replicas, _ := getInt(d, "spec", "replicas")
	if replicas != 3 {
		t.Errorf("worker Deployment: replicas %d, want 3", replicas)
	}
	if !selects(getMap(d, "spec", "selector", "matchLabels"), podLabels) {
		t.Errorf("worker Deployment: selector does not select its pods")
	}
	if args := stringList(get(c, "args")); len(args) == 0 || args[0] != "worker" {
		if cmd := stringList(get(c, "command")); len(cmd) == 0 {
			t.Errorf("worker container: args %v do not start with the worker command", args)
		}
	}

	env := k.containerEnv(t, c)
	checkWorkerEnv(t, "worker container", env)
	// The root file system is read-only: the search index needs a
	// writable volume of its own.
	if dir := env["JETMAIL_INDEX_DIR"]; dir == "" {
		t.Error("worker container: JETMAIL_INDEX_DIR is not set, and ./jetmail-index is on the read-only root")
	} else {
		var vol string
		for _, m := range getList(c, "volumeMounts") {
			if getString(m, "mountPath") == dir {
				vol = getString(m, "name")
			}
		}
		found := false
		for _, v := range getList(pod, "spec", "volumes") {
			if getString(v, "name") == vol && get(v, "emptyDir") != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("worker container: JETMAIL_INDEX_DIR %s is not an emptyDir volume's mount", dir)
		}
	}
	for _, key := range []string{"JETMAIL_NATS_URL", "JETMAIL_SMTP_URL", "JETMAIL_HTTP_ADDR", "JETMAIL_GRACE_PERIOD", "JETMAIL_REPLICAS", "JETMAIL_SMTP_PASSWORD_FILE"} {
		if _, ok := env[key]; !ok {
			t.Errorf("worker container: %s is not set", key)
		}
	}

	// Ports: JETMAIL_HTTP_ADDR, the container port, the probes, the
	// scrape annotation and the Service agree.
	httpPort := portOfAddr(t, env["JETMAIL_HTTP_ADDR"])
	found := false
	for _, p := range getList(c, "ports") {
		n, _ := getInt(p, "containerPort")
		found = found || n == httpPort
	}
	if !found {
		t.Errorf("worker container: no containerPort %d (JETMAIL_HTTP_ADDR %s)", httpPort, env["JETMAIL_HTTP_ADDR"])
	}
	for probe, wantPath := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if p := getString(c, probe, "httpGet", "path"); p != wantPath {
			t.Errorf("worker container: %s path %q, want %s", probe, p, wantPath)
		}
		if p := resolvePort(t, c, getString(c, probe, "httpGet", "port")); p != httpPort {
			t.Errorf("worker container: %s on port %d, but the worker listens on %d", probe, p, httpPort)
		}
	}
	ann := getMap(pod, "metadata", "annotations")
	if fmt.Sprint(ann["prometheus.io/scrape"]) != "true" {
		t.Errorf("worker pods: prometheus.io/scrape annotation is %v", ann["prometheus.io/scrape"])
	}
	if fmt.Sprint(ann["prometheus.io/port"]) != strconv.Itoa(httpPort) {
		t.Errorf("worker pods: prometheus.io/port annotation %v, the worker listens on %d", ann["prometheus.io/port"], httpPort)
	}
	if p, ok := ann["prometheus.io/path"]; ok && p != "/metrics" {
		t.Errorf("worker pods: prometheus.io/path annotation %v, the worker serves /metrics", p)
	}
	services := 0
	for name, svc := range k.ofKind("Service") {
		if !selects(getMap(svc, "spec", "selector"), podLabels) {
			continue
		}
		services++
		for _, p := range getList(svc, "spec", "ports") {
			target := getString(p, "targetPort")
			if target == "" {
				target = getString(p, "port")
			}
			if n := resolvePort(t, c, target); n != httpPort {
				t.Errorf("Service %s: targetPort %s is port %d, the worker listens on %d", name, target, n, httpPort)
			}
		}
	}
	if services == 0 {
		t.Errorf("no Service selects the worker pods")
	}

	// Grace: Kubernetes waits longer than the worker's grace period, with
	// a margin for draining the NATS connection and stopping HTTP.
	grace, err := time.ParseDuration(env["JETMAIL_GRACE_PERIOD"])
	if err != nil {
		t.Fatalf("JETMAIL_GRACE_PERIOD: %v", err)
	}
	term, ok := getInt(d, "spec", "template", "spec", "terminationGracePeriodSeconds")
	if !ok {
		term = 30 // the Kubernetes default
	}
	checkTermination(t, "worker Deployment", time.Duration(term)*time.Second, grace)
	mustFail(t, "termination grace not longer than the worker's", "terminationGracePeriodSeconds", func(r reporter) {
		checkTermination(r, "x", 30*time.Second, 30*time.Second)
	})

	// The PodDisruptionBudget leaves room for one voluntary disruption but
	// keeps at least one worker.
	pdbs := 0
	for name, pdb := range k.ofKind("PodDisruptionBudget") {
		if !selects(getMap(pdb, "spec", "selector", "matchLabels"), podLabels) {
			continue
		}
		pdbs++
		minAvail, hasMin := getInt(pdb, "spec", "minAvailable")
		maxUnavail, hasMax := getInt(pdb, "spec", "maxUnavailable")
		switch {
		case hasMin && (minAvail < 1 || minAvail >= replicas):
			t.Errorf("PodDisruptionBudget %s: minAvailable %d with %d replicas blocks drains or protects nothing", name, minAvail, replicas)
		case hasMax && (maxUnavail < 1 || maxUnavail >= replicas):
			t.Errorf("PodDisruptionBudget %s: maxUnavailable %d with %d replicas", name, maxUnavail, replicas)
		case !hasMin && !hasMax:
			t.Errorf("PodDisruptionBudget %s: neither minAvailable nor maxUnavailable is a number", name)
		}
	}
	if pdbs != 1 {
		t.Errorf("%d PodDisruptionBudgets select the worker pods, want 1", pdbs)
	}

	// The SMTP password: a file from a Secret, named by
	// JETMAIL_SMTP_PASSWORD_FILE.
	checkPasswordFile(t, k, c, getMap(d, "spec", "template", "spec"), env["JETMAIL_SMTP_PASSWORD_FILE"])

	// The worker creates its streams with JETMAIL_REPLICAS replicas, which
	// the NATS cluster must be able to hold.
	sts := k.natsStatefulSet(t)
	natsReplicas, _ := getInt(sts, "spec", "replicas")
	if r, _ := strconv.Atoi(env["JETMAIL_REPLICAS"]); r != 3 || r > natsReplicas {
		t.Errorf("JETMAIL_REPLICAS %q: want 3, on a NATS cluster of %d servers", env["JETMAIL_REPLICAS"], natsReplicas)
	}
	// JETMAIL_NATS_URL points at a Service that selects the NATS pods on
	// their client port.
	natsPod := getMap(sts, "spec", "template")
	natsContainer := getList(natsPod, "spec", "containers")[0]
	for _, u := range strings.Split(env["JETMAIL_NATS_URL"], ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Scheme != "nats" {
			t.Errorf("JETMAIL_NATS_URL %q: not a nats:// URL", u)
			continue
		}
		host := pu.Hostname()
		svcName, _, _ := strings.Cut(host, ".")
		if parts := strings.Split(host, "."); len(parts) >= 2 && strings.HasPrefix(parts[0], getString(sts, "metadata", "name")+"-") {
			svcName = parts[1] // nats-0.nats-headless
		}
		svc, ok := k.objects["Service/"+svcName]
		if !ok {
			t.Errorf("JETMAIL_NATS_URL %q: no Service %s", u, svcName)
			continue
		}
		if !selects(getMap(svc, "spec", "selector"), getMap(natsPod, "metadata", "labels")) {
			t.Errorf("JETMAIL_NATS_URL %q: Service %s does not select the NATS pods", u, svcName)
		}
		port := pu.Port()
		if port == "" {
			port = "4222"
		}
		matched := false
		for _, p := range getList(svc, "spec", "ports") {
			if getString(p, "port") == port {
				matched = resolvePort(t, natsContainer, getString(p, "targetPort")) == natsClientPort(t, natsContainer)
			}
		}
		if !matched {
			t.Errorf("JETMAIL_NATS_URL %q: Service %s has no port %s leading to the NATS client port", u, svcName, port)
		}
	}
}

func checkTermination(t reporter, where string, term, grace time.Duration) {
	t.Helper()
	const margin = 10 * time.Second // drain the NATS connection, stop HTTP
	if term < grace+margin {
		t.Errorf("%s: terminationGracePeriodSeconds %s is not at least the worker's grace period %s + %s: Kubernetes would kill it while it finishes deliveries", where, term, grace, margin)
	}
}

// checkPasswordFile checks that file is a file of a Secret volume mounted
// into the container, from a Secret (defined here) holding that key.
func checkPasswordFile(t *testing.T, k *kube, c any, pod map[string]any, file string) {
	t.Helper()
	if file == "" {
		t.Errorf("worker container: JETMAIL_SMTP_PASSWORD_FILE is not set")
		return
	}
	dir, base := path.Split(file)
	dir = strings.TrimSuffix(dir, "/")
	var volName string
	for _, m := range getList(c, "volumeMounts") {
		if strings.TrimSuffix(getString(m, "mountPath"), "/") == dir && getString(m, "subPath") == "" {
			volName = getString(m, "name")
		}
	}
	if volName == "" {
		t.Errorf("JETMAIL_SMTP_PASSWORD_FILE %s: no volume is mounted at %s", file, dir)
		return
	}
	for _, v := range getList(pod, "volumes") {
		if getString(v, "name") != volName {
			continue
		}
		secretName := getString(v, "secret", "secretName")
		if secretName == "" {
			t.Errorf("JETMAIL_SMTP_PASSWORD_FILE %s: volume %s is not a Secret", file, volName)
			return
		}
		key := base
		if items := getList(v, "secret", "items"); len(items) > 0 {
			key = ""
			for _, it := range items {
				if getString(it, "path") == base {
					key = getString(it, "key")
				}
			}
			if key == "" {
				t.Errorf("JETMAIL_SMTP_PASSWORD_FILE %s: the Secret volume's items have no path %s", file, base)
				return
			}
		}
		secret := k.get(t, "Secret", secretName)
		if get(secret, "data", key) == nil && get(secret, "stringData", key) == nil {
			t.Errorf("Secret %s has no key %s for JETMAIL_SMTP_PASSWORD_FILE", secretName, key)
		}
		return
	}
	t.Errorf("JETMAIL_SMTP_PASSWORD_FILE %s: the pod has no volume %s", file, volName)
}

func (k *kube) natsStatefulSet(t testing.TB) map[string]any {
	t.Helper()
	for _, s := range k.ofKind("StatefulSet") {
		for _, c := range getList(s, "spec", "template", "spec", "containers") {
			if name, _, _ := strings.Cut(getString(c, "image"), ":"); path.Base(name) == "nats" {
				return s
			}
		}
	}
	t.Fatalf("no StatefulSet runs the nats image")
	return nil
}

func natsClientPort(t testing.TB, c any) int {
	return resolvePort(t, c, "client")
}

// TestKubernetesNATS checks the JetStream cluster: its nats.conf is loaded by
// the NATS server's own configuration parser, and its routes, ports, store
// and replicas agree with the StatefulSet and the headless Service.
func TestKubernetesNATS(t *testing.T) {
	k := loadKube(t)
	sts := k.natsStatefulSet(t)
	stsName := getString(sts, "metadata", "name")
	replicas, _ := getInt(sts, "spec", "replicas")
	if replicas != 3 {
		t.Errorf("StatefulSet %s: replicas %d, want 3", stsName, replicas)
	}
	pod := getMap(sts, "spec", "template")
	podLabels := getMap(pod, "metadata", "labels")
	if !selects(getMap(sts, "spec", "selector", "matchLabels"), podLabels) {
		t.Errorf("StatefulSet %s: selector does not select its pods", stsName)
	}
	headlessName := getString(sts, "spec", "serviceName")
	headless := k.get(t, "Service", headlessName)
	if getString(headless, "spec", "clusterIP") != "None" {
		t.Errorf("Service %s (the StatefulSet's serviceName) is not headless", headlessName)
	}
	if !selects(getMap(headless, "spec", "selector"), podLabels) {
		t.Errorf("Service %s does not select the NATS pods", headlessName)
	}
	c := getList(pod, "spec", "containers")[0]

	// The config file: from a ConfigMap volume, at the path given to
	// --config.
	args := append(stringList(get(c, "command")), stringList(get(c, "args"))...)
	confPath := ""
	for i, a := range args {
		if (a == "--config" || a == "-c") && i+1 < len(args) {
			confPath = args[i+1]
		}
	}
	if confPath == "" {
		t.Fatalf("nats container: no --config in %v", args)
	}
	mounts := map[string]string{} // mount path → volume name
	for _, m := range getList(c, "volumeMounts") {
		mounts[strings.TrimSuffix(getString(m, "mountPath"), "/")] = getString(m, "name")
	}
	confVol := mounts[path.Dir(confPath)]
	var cmName string
	for _, v := range getList(pod, "spec", "volumes") {
		if getString(v, "name") == confVol {
			cmName = getString(v, "configMap", "name")
		}
	}
	if cmName == "" {
		t.Fatalf("nats container: %s is not in a ConfigMap volume", confPath)
	}
	conf := getString(k.get(t, "ConfigMap", cmName), "data", path.Base(confPath))
	if conf == "" {
		t.Fatalf("ConfigMap %s has no %s", cmName, path.Base(confPath))
	}

	// Environment variables the config refers to come from the pod.
	podEnv := map[string]bool{}
	for _, e := range getList(c, "env") {
		podEnv[getString(e, "name")] = true
	}
	if strings.Contains(conf, "$SERVER_NAME") && !podEnv["SERVER_NAME"] {
		t.Errorf("nats.conf uses $SERVER_NAME, which the container does not set")
	}
	opts := loadNATSConf(t, conf, map[string]string{"SERVER_NAME": stsName + "-0"})

	if !opts.JetStream {
		t.Errorf("nats.conf: JetStream is not enabled")
	}
	if opts.ServerName != stsName+"-0" {
		t.Errorf("nats.conf: server_name %q, want the pod name (%s-0)", opts.ServerName, stsName)
	}
	// The store is on the StatefulSet's volume claim.
	storeVol := ""
	for mp, vol := range mounts {
		if opts.StoreDir == mp || strings.HasPrefix(opts.StoreDir, mp+"/") {
			storeVol = vol
		}
	}
	var claimSize string
	for _, vct := range getList(sts, "spec", "volumeClaimTemplates") {
		if getString(vct, "metadata", "name") == storeVol {
			claimSize = getString(vct, "spec", "resources", "requests", "storage")
		}
	}
	if claimSize == "" {
		t.Errorf("nats.conf: JetStream store_dir %s is not on a volumeClaimTemplate of the StatefulSet", opts.StoreDir)
	} else if size := parseQuantity(t, claimSize); opts.JetStreamMaxStore <= 0 || opts.JetStreamMaxStore >= size {
		t.Errorf("nats.conf: max_file_store %d must be set and below the volume claim (%s = %d bytes)", opts.JetStreamMaxStore, claimSize, size)
	}

	// Ports of the config and of the container agree.
	for name, want := range map[string]int{"client": opts.Port, "cluster": opts.Cluster.Port, "monitor": opts.HTTPPort} {
		if got := resolvePort(t, c, name); got != want {
			t.Errorf("nats container port %s is %d, nats.conf says %d", name, got, want)
		}
	}
	for _, probe := range []string{"startupProbe", "livenessProbe", "readinessProbe"} {
		if p := getString(c, probe, "httpGet", "port"); p != "" && resolvePort(t, c, p) != opts.HTTPPort {
			t.Errorf("nats container: %s is not on the monitoring port", probe)
		}
	}

	// Routes: one per server, nats-<i>.<headless>:<cluster port>.
	if opts.Cluster.Name == "" {
		t.Errorf("nats.conf: the cluster has no name")
	}
	want := map[string]bool{}
	for i := range replicas {
		want[fmt.Sprintf("%s-%d.%s:%d", stsName, i, headlessName, opts.Cluster.Port)] = true
	}
	got := map[string]bool{}
	for _, r := range opts.Routes {
		host := r.Hostname()
		// Accept the long forms: nats-0.nats-headless.<ns>.svc.cluster.local.
		parts := strings.SplitN(host, ".", 3)
		if len(parts) >= 2 {
			host = parts[0] + "." + parts[1]
		}
		got[host+":"+r.Port()] = true
	}
	if fmt.Sprint(sortedKeys(got)) != fmt.Sprint(sortedKeys(want)) {
		t.Errorf("nats.conf routes %v, want %v (one per StatefulSet pod, through Service %s)", sortedKeys(got), sortedKeys(want), headlessName)
	}
	if getString(headless, "spec", "publishNotReadyAddresses") != "true" {
		t.Errorf("Service %s: publishNotReadyAddresses should be true, or the routes do not resolve until the servers are ready, which they become only once routed", headlessName)
	}
}

// loadNATSConf writes conf to a file and loads it with the NATS server's
// configuration parser, with env set for its $VARIABLES.
func loadNATSConf(t *testing.T, conf string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	f := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(f, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(f)
	if err != nil {
		t.Fatalf("nats.conf does not load: %v", err)
	}
	return opts
}

// parseQuantity parses the Kubernetes quantities used here (10Gi, 512Mi, 8G).
func parseQuantity(t testing.TB, q string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	sort.SliceStable(units, func(i, j int) bool { return len(units[i].suffix) > len(units[j].suffix) })
	for _, u := range units {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("quantity %q: %v", q, err)
			}
			return v * u.mult
		}
	}
	v, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		t.Fatalf("quantity %q: %v", q, err)
	}
	return v
}
