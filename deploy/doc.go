// Package deploy holds no code. It is the home of the deployment files of
// jetmail — the container image (Dockerfile), Prometheus scrape configuration
// and alert rules, the Grafana dashboard and its provisioning, and the
// Kubernetes manifests — and of the tests that check them, together with
// docker-compose.yml at the repository root, against the real worker: that
// every file parses, that every metric an alert or a panel uses is one a
// running worker exports, that every JETMAIL_* variable is a flag of
// `jetmail worker`, and that ports, probes and grace periods agree.
//
// Run them with: go test ./deploy
package deploy
